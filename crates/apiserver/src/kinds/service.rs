//! Services: DNS-1035 names, `SetDefaults_Service`, ClusterIP and NodePort allocation (released
//! again when a create fails or the Service goes away), validation and the `kubectl get`
//! columns.

use std::collections::HashSet;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{KindBehaviour, NameCheck};
use crate::Api;
use crate::admission::defaults::{default, each, obj_at};
use crate::admission::validation::str_at;
use crate::object::{self, check_dns1035_label};
use crate::registry::Resource;
use crate::status::{ApiError, ApiResult, Cause};
use crate::table::{AGE, Columns, N, age, arr, i, map_string, name, none_if_empty, s};

pub struct Services;

impl KindBehaviour for Services {
    fn name_check(&self) -> Option<NameCheck> {
        Some(check_dns1035_label)
    }

    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "type", json!("ClusterIP"));
            let typ = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if typ != "ExternalName" {
                default(spec, "sessionAffinity", json!("None"));
                default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
                default(
                    spec,
                    "sessionAffinityConfig",
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
            if typ == "NodePort" || typ == "LoadBalancer" {
                default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if typ == "LoadBalancer" {
                default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            each(spec, "ports", |p| {
                default(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                default(p, "targetPort", port);
            });
        }
    }

    fn admit<'a>(
        &'a self,
        api: &'a Api,
        res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(allocate_service(api, res, obj, old))
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_service(obj, old, out);
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0),
                ("Port(s)", "string", 0),
                AGE,
                ("Selector", "string", 1),
            ],
            service_row,
        );
        Some(columns)
    }

    fn create_failed<'a>(&'a self, api: &'a Api, obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(api.allocations().release(obj))
    }

    fn after_update<'a>(
        &'a self,
        api: &'a Api,
        old: &'a Value,
        new: &'a Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(api.allocations().release_dropped(old, new))
    }

    fn update_failed<'a>(
        &'a self,
        api: &'a Api,
        old: &'a Value,
        new: &'a Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // The Service as stored now keeps what it holds: a failed write may have landed
            // after all, or another update may hold the same. Unreadable: left to the repair.
            let Some(stored) = stored_service(api, old).await else {
                return;
            };
            api.allocations()
                .release_added(old, new, stored.as_ref())
                .await
        })
    }

    fn after_delete<'a>(&'a self, api: &'a Api, obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(api.allocations().release(obj))
    }
}

/// The Service `svc` names as stored now: None when the store cannot say.
async fn stored_service(api: &Api, svc: &Value) -> Option<Option<Value>> {
    let res = api.registry.find("", "v1", "services")?;
    let key = res.key(object::namespace(svc), object::name(svc));
    let rec = api.store.get(&key).await.ok()?;
    Some(rec.and_then(|r| serde_json::from_slice(&r.value).ok()))
}

/// ClusterIP and NodePort allocation (and release on type changes), as reservations in the
/// store (`crate::alloc`).
async fn allocate_service(
    api: &Api,
    res: &Resource,
    svc: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let name = object::name(svc).to_string();
    let who = crate::alloc::owner(old.unwrap_or(svc));
    let typ = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    let alloc = api.allocations();
    let invalid = |c: Cause| ApiError::invalid(&res.group, &res.kind, &name, vec![c]);
    if let Some(old) = old {
        // Keep what the old object holds unless the client changed it explicitly.
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(f).is_none_or(|v| v.is_null() || v == "")
                && let Some(v) = old.pointer(&format!("/spec/{f}"))
            {
                spec[f] = v.clone();
            }
        }
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if (typ == "NodePort" || typ == "LoadBalancer")
            && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut)
        {
            for p in ports
                .iter_mut()
                .filter(|p| p.get("nodePort").is_none_or(|n| n.is_null() || n == 0))
            {
                if let Some(op) = old_ports.iter().find(|op| {
                    op.get("port") == p.get("port") && op.get("protocol") == p.get("protocol")
                }) && let Some(np) = op.get("nodePort")
                {
                    p["nodePort"] = np.clone();
                }
            }
        }
        // What the old object holds and this one drops is released once the update is
        // stored (`after_update`), never before: the update may still be refused.
    }
    if typ == "ExternalName" {
        if let Some(m) = spec.as_object_mut() {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                m.remove(f);
            }
        }
        return Ok(());
    }
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(String::from);
    let ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ip == "None" {
        spec["clusterIPs"] = json!(["None"]);
    } else if ip.is_empty() {
        let got = alloc
            .allocate_ip(&who)
            .await
            .map_err(|e| alloc_error("serviceIP", e))?;
        spec["clusterIP"] = json!(got.to_string());
        spec["clusterIPs"] = json!([got.to_string()]);
    } else if old_ip.as_deref() != Some(ip.as_str()) {
        let parsed: std::net::Ipv4Addr = ip.parse().map_err(|_| {
            invalid(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ))
        })?;
        if !alloc.contains(parsed) {
            return Err(invalid(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "failed to allocate IP: the provided network does not match the current range",
            )));
        }
        if !alloc
            .reserve_ip(parsed, &who)
            .await
            .map_err(|e| alloc_error("serviceIP", crate::alloc::AllocError::Store(e)))?
        {
            return Err(invalid(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "failed to allocate IP: provided IP is already allocated",
            )));
        }
        spec["clusterIPs"] = json!([ip]);
    }
    if spec.get("ipFamilies").is_none_or(Value::is_null) {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if typ == "NodePort" || typ == "LoadBalancer" {
        let old_ports = old.map(crate::alloc::node_ports).unwrap_or_default();
        let lb_ports = spec
            .get("allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            != Some(false);
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                match p
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|n| *n != 0)
                {
                    Some(np) => {
                        let np16 = u16::try_from(np).unwrap_or(0);
                        if !old_ports.contains(&np16)
                            && !alloc.reserve_port(np16, &who).await.map_err(|e| {
                                alloc_error("nodePort", crate::alloc::AllocError::Store(e))
                            })?
                        {
                            let (lo, hi) = alloc.port_range();
                            let msg = if alloc.port_in_range(np16) {
                                "provided port is already allocated".to_string()
                            } else {
                                format!(
                                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                                )
                            };
                            return Err(invalid(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(np),
                                msg,
                            )));
                        }
                    }
                    None if typ == "NodePort" || lb_ports => {
                        let np = alloc
                            .allocate_port(&who)
                            .await
                            .map_err(|e| alloc_error("nodePort", e))?;
                        p["nodePort"] = json!(np);
                    }
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// The error of a failed allocation, as upstream words it.
fn alloc_error(what: &str, e: crate::alloc::AllocError) -> ApiError {
    match e {
        crate::alloc::AllocError::Full => {
            ApiError::internal(format!("failed to allocate a {what}: range is full"))
        }
        crate::alloc::AllocError::Store(e) => {
            ApiError::internal(format!("failed to allocate a {what}: {e}"))
        }
    }
}

fn validate_service(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let typ = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&typ) {
        out.push(Cause::unsupported("spec.type", &json!(typ), &types));
    }
    let headless = str_at(obj, "/spec/clusterIP") == Some("None");
    let ports_list = arr(obj, "/spec/ports");
    if typ == "ExternalName" {
        if str_at(obj, "/spec/externalName").unwrap_or("").is_empty() {
            out.push(Cause::required("spec.externalName"));
        }
    } else if ports_list.is_empty() && !headless {
        out.push(Cause::required("spec.ports"));
    }
    let mut names = HashSet::new();
    for (i, p) in ports_list.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            out.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &json!(port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = str_at(p, "/name").unwrap_or("");
        if ports_list.len() > 1 && name.is_empty() {
            out.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name) {
            out.push(Cause::duplicate(
                format!("spec.ports[{i}].name"),
                &json!(name),
            ));
        }
        if let Some(proto) = str_at(p, "/protocol")
            && !["TCP", "UDP", "SCTP"].contains(&proto)
        {
            out.push(Cause::unsupported(
                format!("spec.ports[{i}].protocol"),
                &json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if p.get("nodePort").is_some_and(|n| !n.is_null() && n != 0) && typ == "ClusterIP" {
            out.push(Cause::forbidden(
                format!("spec.ports[{i}].nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(a) = str_at(obj, "/spec/sessionAffinity")
        && !["None", "ClientIP"].contains(&a)
    {
        out.push(Cause::unsupported(
            "spec.sessionAffinity",
            &json!(a),
            &["ClientIP", "None"],
        ));
    }
    for (f, ok) in [
        ("externalTrafficPolicy", &["Cluster", "Local"]),
        ("internalTrafficPolicy", &["Cluster", "Local"]),
    ] {
        if let Some(v) = str_at(obj, &format!("/spec/{f}"))
            && !ok.contains(&v)
        {
            out.push(Cause::unsupported(format!("spec.{f}"), &json!(v), ok));
        }
    }
    if let Some(old) = old {
        let old_ip = str_at(old, "/spec/clusterIP").unwrap_or("");
        if !old_ip.is_empty()
            && str_at(old, "/spec/type") != Some("ExternalName")
            && typ != "ExternalName"
            && str_at(obj, "/spec/clusterIP").unwrap_or("") != old_ip
        {
            out.push(Cause::invalid(
                "spec.clusterIPs[0]",
                obj.pointer("/spec/clusterIP").unwrap_or(&Value::Null),
                "may not change once set",
            ));
        }
    }
}

fn service_row(v: &Value) -> Vec<Value> {
    let typ = s(v, "/spec/type");
    let typ = if typ.is_empty() { "ClusterIP" } else { typ };
    let ports: Vec<String> = arr(v, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np > 0 => format!("{}:{np}/{proto}", i(p, "/port")),
                _ => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    let mut external: Vec<String> = arr(v, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    for ing in arr(v, "/status/loadBalancer/ingress") {
        let addr = if !s(ing, "/ip").is_empty() {
            s(ing, "/ip")
        } else {
            s(ing, "/hostname")
        };
        if !addr.is_empty() {
            external.push(addr.to_string());
        }
    }
    let external = match typ {
        "ExternalName" => s(v, "/spec/externalName").to_string(),
        "LoadBalancer" if external.is_empty() => "<pending>".into(),
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    };
    let cip = s(v, "/spec/clusterIP");
    let selector = map_string(v, "/spec/selector");
    vec![
        name(v),
        json!(typ),
        json!(if cip.is_empty() { "<none>" } else { cip }),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age(v),
        none_if_empty(selector),
    ]
}
