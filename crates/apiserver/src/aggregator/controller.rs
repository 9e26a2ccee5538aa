//! The aggregator's controllers in one loop, run on every change of APIServices, Services,
//! EndpointSlices or Endpoints, when the served resources change (CRDs), and every 30 seconds
//! as upstream resyncs:
//! - autoregister / crdregistration: one local APIService (no `spec.service`) per group/version
//!   this server serves, removed with the CRD that defined it;
//! - the availability controllers: `Available` is True (`Local`) for local APIServices; for
//!   delegated ones it follows the Service, its endpoints and a discovery request to the backend
//!   (`ServiceNotFound`, `ServicePortError`, `EndpointsNotFound`, `MissingEndpoints`,
//!   `FailedDiscoveryCheck`, `Passed`);
//! - the backend's discovery document, kept for the merged `/apis` documents;
//! - `kube-system/extension-apiserver-authentication`, which tells backends how to trust the
//!   identity headers this proxy sends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::backend;
use super::{Delegated, state};
use crate::Api;
use crate::bootstrap::ensure;
use crate::context::Ctx;
use crate::lifecycle::{commit_update, decorate, delete_object, get_current};
use crate::service_backend::{self, ServiceRef, Unresolved};

const GROUP: &str = "apiregistration.k8s.io";
const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";
/// Upstream re-checks every APIService this often even without changes.
const RESYNC: Duration = Duration::from_secs(30);
/// The largest discovery document read from a backend.
const MAX_DISCOVERY: usize = 8 << 20;

/// Starts the controllers.
pub fn spawn(api: Arc<Api>) {
    tokio::spawn(async move {
        let changed = Arc::new(Notify::new());
        let backends = Backends::default();
        for (group, plural) in [
            (GROUP, "apiservices"),
            ("", "services"),
            ("discovery.k8s.io", "endpointslices"),
            ("", "endpoints"),
        ] {
            if let Some(res) = api.registry.find(group, "v1", plural) {
                // Any APIService change counts; of the others, those of backends' Services.
                let only = (plural != "apiservices").then(|| Owners {
                    backends: backends.clone(),
                    by_label: plural == "endpointslices",
                });
                tokio::spawn(watch(api.clone(), res.prefix(), changed.clone(), only));
            }
        }
        let mut generation = 0;
        let mut ready = false;
        let mut last: Option<Instant> = None;
        let mut notified = true;
        loop {
            let now_ready = api.front_proxy.get().is_some();
            if notified
                || now_ready != ready
                || generation != api.registry.generation()
                || last.is_none_or(|t| t.elapsed() >= RESYNC)
            {
                generation = api.registry.generation();
                ready = now_ready;
                last = Some(Instant::now());
                sync(&api, ready, &backends).await;
            }
            notified = tokio::select! {
                _ = changed.notified() => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if notified {
                // Changes come in bursts (a Service and its endpoints): one pass for them all.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

/// The Services that remote APIServices name (namespace, name): changes to other Services and
/// endpoints (every pod's churn) do not call for a pass.
type Backends = Arc<std::sync::RwLock<HashSet<(String, String)>>>;

/// Which objects under a prefix concern the aggregator: those of the backends' Services, named
/// as the Service (Services, Endpoints) or labelled with it (EndpointSlices).
struct Owners {
    backends: Backends,
    by_label: bool,
}

/// Signals `changed` on every change under `prefix`, or with `only`, on changes of the objects
/// of the backends' Services.
async fn watch(api: Arc<Api>, prefix: String, changed: Arc<Notify>, only: Option<Owners>) {
    loop {
        let from = api.store.current_rev();
        if let Ok(mut w) = api.store.watch(&prefix, from).await {
            changed.notify_one();
            while let Ok(event) = w.next().await {
                let concerned = only.as_ref().is_none_or(|o| {
                    let backends = o.backends.read().unwrap_or_else(|e| e.into_inner());
                    // A slice moved from one Service to another concerns both.
                    [Some(&event.record.value), event.prev.as_ref()]
                        .into_iter()
                        .flatten()
                        .filter_map(|v| owning_service(v, o.by_label))
                        .any(|s| backends.contains(&s))
                });
                if concerned {
                    changed.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The Service a stored object belongs to: by its name, or `by_label`.
fn owning_service(stored: &[u8], by_label: bool) -> Option<(String, String)> {
    let obj: Value = serde_json::from_slice(stored).ok()?;
    let ns = obj.pointer("/metadata/namespace")?.as_str()?;
    let name = if by_label {
        obj.pointer("/metadata/labels/kubernetes.io~1service-name")
    } else {
        obj.pointer("/metadata/name")
    }?
    .as_str()?;
    Some((ns.to_string(), name.to_string()))
}

fn apiservice_name(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

/// Upstream's priorities for the built-in groups (kube-apiserver's `apiVersionPriorities`);
/// CRD groups get crdregistration's (1000, 100), metrics-server's manifest's for metrics.
fn priorities(group: &str, version: &str, custom: bool) -> (i64, i64) {
    if custom {
        return (1000, 100);
    }
    let group_priority = match group {
        "" => 18000,
        "apps" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "apiextensions.k8s.io" | "admissionregistration.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        "flowcontrol.apiserver.k8s.io" => 16100,
        "metrics.k8s.io" => 100,
        _ => 16000,
    };
    let version_priority = match crate::registry::version_priority(version).0 {
        _ if group == "metrics.k8s.io" => 100,
        3 => 15,
        2 => 9,
        _ => 1,
    };
    (group_priority, version_priority)
}

async fn list_apiservices(api: &Api) -> Vec<Value> {
    let Some(res) = api.registry.find(GROUP, "v1", "apiservices") else {
        return Vec::new();
    };
    match api.store.list(&res.prefix(), 0, None, None).await {
        Ok(page) => page
            .items
            .iter()
            .filter_map(|r| decorate(&res, r).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn spec_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// One pass of every controller; `ready` says whether the client credentials to reach backends
/// are loaded (until then delegated APIServices keep their condition). The Services remote
/// APIServices name go to `backends` before the checks, so that changes to them while the
/// checks run call for another pass.
async fn sync(api: &Arc<Api>, ready: bool, backends: &Backends) {
    let existing = list_apiservices(api).await;
    autoregister(api, &existing).await;
    let mut delegated = Vec::new();
    let mut discovery = HashMap::new();
    let mut remote = Vec::new();
    for obj in list_apiservices(api).await {
        match super::service_ref(&obj) {
            Some(service) => remote.push((obj, service)),
            None => {
                set_available(
                    api,
                    &obj,
                    true,
                    "Local",
                    "Local APIServices are always available",
                )
                .await
            }
        }
    }
    *backends.write().unwrap_or_else(|e| e.into_inner()) = remote
        .iter()
        .map(|(_, s)| (s.namespace.clone(), s.name.clone()))
        .collect();
    // Backends are checked at once, so that one that does not answer delays no other.
    let checks = futures::future::join_all(remote.iter().map(|(obj, service)| async move {
        if !ready {
            return None;
        }
        let (group, version) = (spec_str(obj, "group"), spec_str(obj, "version"));
        Some(check(api, obj, service, group, version).await)
    }))
    .await;
    for ((obj, service), checked) in remote.into_iter().zip(checks) {
        let group = spec_str(&obj, "group").to_string();
        let version = spec_str(&obj, "version").to_string();
        let available = if let Some(checked) = checked {
            match checked {
                Ok(doc) => {
                    if doc.is_object() {
                        discovery.insert((group.clone(), version.clone()), doc);
                    }
                    set_available(api, &obj, true, "Passed", "all checks passed").await;
                    true
                }
                Err(u) => {
                    set_available(api, &obj, false, u.reason, &u.message).await;
                    false
                }
            }
        } else {
            available_condition(&obj).is_some_and(|c| c["status"] == "True")
        };
        // What this server serves itself is never delegated (an APIService claiming it, such as
        // metrics-server's, still gets its condition).
        if api
            .registry
            .all()
            .iter()
            .any(|r| r.group == group && r.version == version)
        {
            continue;
        }
        delegated.push(Delegated {
            name: name_of(&obj).to_string(),
            group_priority: obj
                .pointer("/spec/groupPriorityMinimum")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            version_priority: obj
                .pointer("/spec/versionPriority")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            tls: backend::tls_config(api, &obj, false),
            group,
            version,
            service,
            available,
        });
    }
    let st = state(api);
    *st.delegated.write().unwrap_or_else(|e| e.into_inner()) = delegated;
    *st.discovery.write().unwrap_or_else(|e| e.into_inner()) = discovery;
    if let Err(e) = publish_authentication(api).await {
        tracing::debug!("extension-apiserver-authentication: {e}");
    }
}

/// Local APIServices for every served group/version; the CRD ones go when their group/version
/// is no longer served.
async fn autoregister(api: &Arc<Api>, existing: &[Value]) {
    let names: HashSet<&str> = existing.iter().map(name_of).collect();
    let custom: HashSet<(String, String)> = api
        .registry
        .all()
        .iter()
        .filter(|r| r.is_custom())
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    let mut wanted = HashSet::new();
    for (group, versions) in api.registry.groups() {
        for version in versions {
            let name = apiservice_name(&group, &version);
            let is_custom = custom.contains(&(group.clone(), version.clone()));
            wanted.insert(name.clone());
            if names.contains(name.as_str()) {
                continue;
            }
            let (gp, vp) = priorities(&group, &version, is_custom);
            let obj = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": name, "labels": {AUTOMANAGED: if is_custom { "true" } else { "onstart" }}},
                "spec": {"group": group, "version": version, "groupPriorityMinimum": gp, "versionPriority": vp}});
            if let Err(e) = ensure(api, GROUP, "v1", "apiservices", None, obj, false).await {
                tracing::warn!("registering APIService {name}: {e}");
            }
        }
    }
    let Some(res) = api.registry.find(GROUP, "v1", "apiservices") else {
        return;
    };
    for obj in existing {
        let name = name_of(obj);
        let automanaged = obj
            .pointer(&format!(
                "/metadata/labels/{}",
                AUTOMANAGED.replace('/', "~1")
            ))
            .and_then(Value::as_str);
        if automanaged == Some("true")
            && super::service_ref(obj).is_none()
            && !wanted.contains(name)
        {
            let ctx = Ctx::internal(GROUP, "v1", "apiservices", None);
            if let Err(e) = delete_object(api, &res, &ctx, name, &Default::default()).await {
                tracing::warn!("removing APIService {name}: {e}");
            }
        }
    }
}

fn available_condition(obj: &Value) -> Option<&Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Available")
}

/// Sets the `Available` condition unless it already says this (the transition time moves only
/// when the status does, as upstream's `SetAPIServiceCondition`).
async fn set_available(api: &Api, obj: &Value, available: bool, reason: &str, message: &str) {
    let status = if available { "True" } else { "False" };
    if let Some(c) = available_condition(obj)
        && c["status"] == status
        && c["reason"] == reason
        && c["message"] == message
    {
        return;
    }
    let Some(res) = api.registry.find(GROUP, "v1", "apiservices") else {
        return;
    };
    let mut ctx = Ctx::internal(GROUP, "v1", "apiservices", None);
    ctx.user_agent = "kube-apiserver".into();
    let name = name_of(obj);
    let Ok((rec, current)) = get_current(api, &res, &ctx, name).await else {
        return;
    };
    let previous = available_condition(&current).cloned();
    let since = match &previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
    };
    let condition = json!({"type": "Available", "status": status, "lastTransitionTime": since,
        "reason": reason, "message": message});
    let mut new = current.clone();
    let mut conditions: Vec<Value> = current
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match conditions.iter_mut().find(|c| c["type"] == "Available") {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
    new["status"] = json!({"conditions": conditions});
    if let Err(e) = commit_update(api, &res, &ctx, rec.rev, &current, new, Some("status")).await {
        tracing::debug!("updating APIService {name} status: {e}");
    }
}

/// The availability check: the Service has a ready endpoint for its port and the backend
/// answers its discovery path (as `system:kube-aggregator` in `system:masters`, without
/// verifying its certificate, as upstream). Returns the backend's discovery document.
async fn check(
    api: &Api,
    obj: &Value,
    svc: &ServiceRef,
    group: &str,
    version: &str,
) -> Result<Value, Unresolved> {
    let addrs = service_backend::resolve(api, svc).await?;
    let first = addrs.first().map(ToString::to_string).unwrap_or_default();
    let failed = |message: String| Unresolved {
        reason: "FailedDiscoveryCheck",
        message,
    };
    let tls = backend::tls_config(api, obj, true).map_err(failed)?;
    let path = if name_of(obj) == "v1." {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let attempt = async {
        let (addr, mut sender) = service_backend::connect(&tls, &svc.server_name(), &addrs)
            .await
            .map_err(|e| format!("failing or missing response from https://{first}{path}: {e}"))?;
        let url = format!("https://{addr}{path}");
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, addr.to_string())
            .header(http::header::ACCEPT, "application/json")
            .header("X-Remote-User", "system:kube-aggregator")
            .header("X-Remote-Group", "system:masters")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("failing or missing response from {url}: {e}"))?;
        let code = resp.status().as_u16();
        if !(200..300).contains(&code) {
            return Err(format!(
                "failing or missing response from {url}: bad status from {url}: {code}"
            ));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_DISCOVERY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
    };
    match tokio::time::timeout(Duration::from_secs(6), attempt).await {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(failed(format!(
            "timed out waiting for https://{first}{path}"
        ))),
    }
}

/// `kube-system/extension-apiserver-authentication`: the CA of client certificates (the cluster
/// CA), the front proxy's CA and name, and the headers of the identity it forwards. Written
/// once the cluster CA is published in `kube-root-ca.crt`.
async fn publish_authentication(api: &Api) -> anyhow::Result<()> {
    let Some(res) = api.registry.find("", "v1", "configmaps") else {
        return Ok(());
    };
    let Some(front_proxy) = api.front_proxy.get() else {
        return Ok(());
    };
    let ctx = Ctx::internal("", "v1", "configmaps", Some("kube-system"));
    let Ok((_, root)) = get_current(api, &res, &ctx, "kube-root-ca.crt").await else {
        return Ok(());
    };
    let Some(ca) = root.pointer("/data/ca.crt").and_then(Value::as_str) else {
        return Ok(());
    };
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
    "data": {
        "client-ca-file": ca,
        "requestheader-client-ca-file": front_proxy.ca_pem,
        "requestheader-allowed-names": json!([kinglet_pki::FRONT_PROXY_CLIENT_USER]).to_string(),
        "requestheader-username-headers": r#"["X-Remote-User"]"#,
        "requestheader-group-headers": r#"["X-Remote-Group"]"#,
        "requestheader-extra-headers-prefix": r#"["X-Remote-Extra-"]"#,
    }});
    ensure(api, "", "v1", "configmaps", Some("kube-system"), cm, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_apiservice_names_and_priorities() {
        assert_eq!(apiservice_name("", "v1"), "v1.");
        assert_eq!(apiservice_name("apps", "v1"), "v1.apps");
        assert_eq!(priorities("", "v1", false), (18000, 15));
        assert_eq!(priorities("batch", "v1beta1", false), (17400, 9));
        assert_eq!(priorities("metrics.k8s.io", "v1beta1", false), (100, 100));
        assert_eq!(priorities("example.com", "v1", true), (1000, 100));
    }

    #[tokio::test]
    async fn builtins_are_local_apiservices_and_crd_ones_follow_crds() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::test_api(dir.path()).await;
        sync(&api, false, &Backends::default()).await;
        sync(&api, false, &Backends::default()).await;
        let all = list_apiservices(&api).await;
        let find = |n: &str| all.iter().find(|o| name_of(o) == n).cloned();
        let metrics = find("v1beta1.metrics.k8s.io").expect("metrics APIService");
        let cond = available_condition(&metrics).expect("condition");
        assert_eq!(cond["status"], "True");
        assert_eq!(cond["reason"], "Local");
        assert!(metrics.pointer("/spec/service").is_none());
        assert!(find("v1.apps").is_some());
        assert!(delegated_names(&api).is_empty());

        // An automanaged APIService whose group/version is not served is removed.
        let stale = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1.gone.example.com", "labels": {AUTOMANAGED: "true"}},
            "spec": {"group": "gone.example.com", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 100}});
        ensure(&api, GROUP, "v1", "apiservices", None, stale, false)
            .await
            .unwrap();
        sync(&api, false, &Backends::default()).await;
        let all = list_apiservices(&api).await;
        assert!(!all.iter().any(|o| name_of(o) == "v1.gone.example.com"));
        // The core group's is named `v1.`, which only the APIService name rule accepts.
        assert!(all.iter().any(|o| name_of(o) == "v1."), "no v1. APIService");
    }

    #[tokio::test]
    async fn crd_group_versions_get_local_apiservices_while_served() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::test_api(dir.path()).await;
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gizmos.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo", "listKind": "GizmoList"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
        ensure(
            &api,
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            None,
            crd,
            false,
        )
        .await
        .unwrap();
        crate::crd::sync(&api).await.unwrap();
        sync(&api, false, &Backends::default()).await;
        let all = list_apiservices(&api).await;
        let gizmos = all
            .iter()
            .find(|o| name_of(o) == "v1.stable.example.com")
            .expect("APIService for the CRD's group/version");
        assert_eq!(gizmos["metadata"]["labels"][AUTOMANAGED], "true");
        assert_eq!(gizmos["spec"]["groupPriorityMinimum"], 1000);

        let res = api
            .registry
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let ctx = Ctx::internal(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            None,
        );
        delete_object(
            &api,
            &res,
            &ctx,
            "gizmos.stable.example.com",
            &Default::default(),
        )
        .await
        .unwrap();
        // The CRD controller (also running) finishes the deletion; wait until it is unserved.
        for _ in 0..50 {
            let _ = crate::crd::sync(&api).await;
            if api
                .registry
                .find("stable.example.com", "v1", "gizmos")
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sync(&api, false, &Backends::default()).await;
        let all = list_apiservices(&api).await;
        assert!(!all.iter().any(|o| name_of(o) == "v1.stable.example.com"));
    }

    #[tokio::test]
    async fn delegated_apiservice_without_service_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::test_api(dir.path()).await;
        let _ = api.front_proxy.set(crate::FrontProxy {
            ca_pem: String::new(),
            tls: Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
        });
        let remote = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.example.com"},
            "spec": {"group": "example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                "insecureSkipTLSVerify": true, "service": {"namespace": "default", "name": "missing"}}});
        ensure(&api, GROUP, "v1", "apiservices", None, remote, false)
            .await
            .unwrap();
        sync(&api, true, &Backends::default()).await;
        let obj = list_apiservices(&api)
            .await
            .into_iter()
            .find(|o| name_of(o) == "v1alpha1.example.com")
            .unwrap();
        let cond = available_condition(&obj).unwrap();
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "ServiceNotFound");
        assert_eq!(delegated_names(&api), ["v1alpha1.example.com"]);
        let path = crate::request::parse_path("/apis/example.com/v1alpha1/widgets");
        let target = super::super::target(&api, path.as_ref()).expect("delegated");
        let parts = http::Request::get("/apis/example.com/v1alpha1/widgets")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let resp = super::super::proxy(
            &api,
            target,
            &crate::auth::UserInfo::internal(),
            parts,
            Body::empty(),
        )
        .await;
        assert_eq!(resp.status(), 503);
    }

    fn delegated_names(api: &Api) -> Vec<String> {
        super::super::delegated(api)
            .into_iter()
            .map(|d| d.name)
            .collect()
    }
}
