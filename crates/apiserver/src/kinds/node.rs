//! Nodes: any name, the `spec.unschedulable` field selector, the `kubectl get nodes` columns,
//! status kept on create (the kubelet registers a node with its status), and upstream's
//! ValidateNode rules for the pod ranges: `spec.podCIDRs` valid CIDRs (a dual-stack pair at
//! most), `podCIDR` its first, and both set once and never changed (the node IPAM controller
//! gives them; the overlay routes by them).

use std::net::IpAddr;

use serde_json::{Value, json};

use super::{KindBehaviour, NameCheck, any_name};
use crate::object::field_string;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, arr, name, none_if_empty, s};

pub struct Nodes;

impl KindBehaviour for Nodes {
    fn name_check(&self) -> Option<NameCheck> {
        Some(any_name)
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Status", "string", 0),
                ("Roles", "string", 0),
                AGE,
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ],
            node_row,
        );
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "spec.unschedulable" => Some(
                obj.pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            _ => field_string(obj, field),
        }
    }

    fn prepare_for_create(&self, _res: &Resource, _obj: &mut Value) {}

    /// `podCIDR` and `podCIDRs` kept in step as upstream's conversion does: either one set
    /// alone fills the other.
    fn defaults(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let single = (spec.get("podCIDR").and_then(Value::as_str))
            .filter(|c| !c.is_empty())
            .map(String::from);
        let first = (spec.get("podCIDRs").and_then(Value::as_array))
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(String::from);
        match (single, first) {
            (Some(c), None) => {
                spec.insert("podCIDRs".into(), json!([c]));
            }
            (None, Some(c)) => {
                spec.insert("podCIDR".into(), json!(c));
            }
            _ => {}
        }
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_pod_cidrs(obj, old, out);
    }
}

/// A Node's pod ranges as upstream keeps them: `podCIDRs`, else `podCIDR` alone.
fn pod_cidrs(node: &Value) -> Vec<Value> {
    let list = (node.pointer("/spec/podCIDRs").and_then(Value::as_array)).filter(|a| !a.is_empty());
    match (list, node.pointer("/spec/podCIDR")) {
        (Some(list), _) => list.clone(),
        (None, Some(Value::String(c))) if !c.is_empty() => vec![json!(c)],
        _ => Vec::new(),
    }
}

/// Whether `s` is an IP network in CIDR notation (host bits may be set, as upstream allows).
fn cidr_family(s: &str) -> Option<bool> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let ok = !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && prefix.parse::<u8>().is_ok_and(|p| p <= max);
    ok.then_some(addr.is_ipv4())
}

/// Upstream's ValidateNode and ValidateNodeUpdate for the pod ranges: valid CIDRs, one per
/// family, `podCIDR` the first of `podCIDRs`; on update they may only go from unset to set.
fn validate_pod_cidrs(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let cidrs = pod_cidrs(obj);
    let mut families = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        match c.as_str().and_then(cidr_family) {
            Some(v4) => families.push(v4),
            None => out.push(Cause::invalid(
                format!("spec.podCIDRs[{i}]"),
                c,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )),
        }
    }
    if cidrs.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        out.push(Cause::invalid(
            "spec.podCIDRs",
            &Value::Array(cidrs.clone()),
            "may specify no more than one CIDR for each IP family",
        ));
    }
    if let (Some(single), Some(first)) = (
        obj.pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty()),
        cidrs.first(),
    ) && first.as_str() != Some(single)
    {
        out.push(Cause::invalid(
            "spec.podCIDR",
            &json!(single),
            "must equal spec.podCIDRs[0]",
        ));
    }
    if let Some(old) = old {
        let before = pod_cidrs(old);
        if !before.is_empty() && before != cidrs {
            out.push(Cause::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
    }
}

fn node_row(n: &Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    let ready = arr(n, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    status.push(match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".into(),
        _ => "NotReady".into(),
    });
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        arr(n, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == t)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(n),
        json!(status.join(",")),
        none_if_empty(roles.join(",")),
        age(n),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(n, "/status/nodeInfo/osImage")),
        json!(s(n, "/status/nodeInfo/kernelVersion")),
        json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(spec: Value) -> Value {
        let mut n = json!({"metadata": {"name": "n1"}, "spec": spec});
        Nodes.defaults(&mut n);
        n
    }

    fn problems(obj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut out = Vec::new();
        validate_pod_cidrs(obj, old, &mut out);
        out.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_nodes_pod_range_is_set_once_and_never_changed() {
        let bare = node(json!({}));
        let assigned = node(json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}));
        // From unset to set (the node IPAM controller), and unchanged afterwards: fine.
        assert_eq!(problems(&assigned, Some(&bare)), Vec::<String>::new());
        assert_eq!(problems(&assigned, Some(&assigned)), Vec::<String>::new());
        assert_eq!(problems(&assigned, None), Vec::<String>::new());
        // Either field set alone fills the other.
        let single = node(json!({"podCIDR": "10.42.1.0/24"}));
        assert_eq!(single, assigned);
        assert_eq!(node(json!({"podCIDRs": ["10.42.1.0/24"]})), assigned);
        // Any later change, removal included, is refused.
        for changed in [
            node(json!({"podCIDR": "10.42.2.0/24", "podCIDRs": ["10.42.2.0/24"]})),
            node(json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24", "fd00::/64"]})),
            bare.clone(),
            node(json!({"podCIDR": "", "podCIDRs": []})),
        ] {
            let p = problems(&changed, Some(&assigned));
            assert!(
                p.iter().any(|p| p
                    .starts_with("spec.podCIDRs: Forbidden: node updates may not change podCIDR")),
                "{changed}: {p:?}"
            );
        }
        // podCIDR must be podCIDRs[0] (a merge patch of one of them only).
        let mut split = assigned.clone();
        split["spec"]["podCIDR"] = json!("10.42.9.0/24");
        let p = problems(&split, Some(&assigned));
        assert!(
            p.iter()
                .any(|p| p.starts_with("spec.podCIDR: Invalid value")),
            "{p:?}"
        );
        assert!(
            problems(&split, None)
                .iter()
                .any(|p| p.starts_with("spec.podCIDR: "))
        );
    }

    #[test]
    fn pod_ranges_are_cidrs_one_per_family() {
        for ok in [
            json!(["10.42.1.0/24"]),
            json!(["10.42.1.7/24", "fd00::/64"]),
            json!(["fd00::/64", "10.42.1.0/24"]),
        ] {
            assert_eq!(
                problems(&node(json!({"podCIDRs": ok})), None),
                Vec::<String>::new(),
                "{ok}"
            );
        }
        for bad in [
            json!(["10.42.1.0"]),
            json!(["10.42.1.0/33"]),
            json!(["10.42.1.0/+8"]),
            json!(["nope/24"]),
            json!([24]),
            json!(["10.42.1.0/24", "10.42.2.0/24"]),
            json!(["10.42.1.0/24", "fd00::/64", "fd01::/64"]),
        ] {
            assert!(
                !problems(&node(json!({"podCIDRs": bad})), None).is_empty(),
                "{bad}"
            );
        }
    }
}
