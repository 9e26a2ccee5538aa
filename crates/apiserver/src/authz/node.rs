//! The node authorizer and NodeRestriction: a node's credentials (`system:node:<name>` in
//! group `system:nodes`) read only the Secrets, ConfigMaps, PVCs and ServiceAccount tokens of
//! pods bound to that node, and write only its own Node and Lease and its own pods' status.

use std::sync::OnceLock;

use serde_json::Value;

use super::super::Api;
use super::super::auth::UserInfo;
use super::super::context::Ctx;
use super::super::registry::Resource;
use super::super::status::{ApiError, ApiResult};
use super::rbac::Rule;
use super::{Attributes, Decision};

/// What every node may do (upstream's `system:node` ClusterRole); the object-level limits
/// come on top, below.
pub const NODE_RULES: &[&str] = &[
    "create | authentication.k8s.io | tokenreviews",
    "create | authorization.k8s.io | localsubjectaccessreviews subjectaccessreviews",
    "{RO} | - | services",
    "create get list watch | - | nodes",
    "patch update | - | nodes/status",
    "patch update | - | nodes",
    "create patch update | - | events",
    "{RO} | - | pods",
    "create delete | - | pods",
    "patch update | - | pods/status",
    "create | - | pods/eviction",
    "{RO} | - | configmaps secrets",
    "get | - | persistentvolumeclaims persistentvolumes",
    "get | - | endpoints",
    "create get list watch | certificates.k8s.io | certificatesigningrequests",
    "create delete get patch update | coordination.k8s.io | leases",
    "get | storage.k8s.io | volumeattachments",
    "create | - | serviceaccounts/token",
    "get patch update | - | persistentvolumeclaims/status",
    "{RO} | storage.k8s.io | csidrivers",
    "create delete get patch update | storage.k8s.io | csinodes",
    "{RO} | node.k8s.io | runtimeclasses",
];

fn node_rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        NODE_RULES
            .iter()
            .map(|t| Rule::from_json(&super::table_rule(t)))
            .collect()
    })
}

/// The node a user's credentials belong to, if they are a node's.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == "system:nodes")).then_some(name)
}

/// The identity a node's kubelet uses.
pub fn node_user(node: &str) -> UserInfo {
    UserInfo {
        name: format!("system:node:{node}"),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        ..Default::default()
    }
}

pub async fn authorize(api: &Api, node: &str, a: &Attributes) -> Decision {
    if !a.resource_request || !a.group.is_empty() && a.group != "coordination.k8s.io" {
        return by_rules(a);
    }
    let no_relation = || {
        Decision::Deny(format!(
            "no relationship found between node '{node}' and this object"
        ))
    };
    match (a.resource.as_str(), a.subresource.as_str()) {
        ("secrets" | "configmaps" | "persistentvolumeclaims", "") => {
            if !matches!(a.verb.as_str(), "get" | "list" | "watch") || a.name.is_empty() {
                return Decision::Deny(format!(
                    "can only read individual {} of pods bound to node '{node}'",
                    a.resource
                ));
            }
            let wanted = (a.resource.as_str(), a.name.as_str());
            match pods_on(api, node, &a.namespace).await {
                pods if pods.iter().any(|p| references(p).contains(&wanted)) => by_rules(a),
                _ => no_relation(),
            }
        }
        ("serviceaccounts", "token") => {
            let uses = |p: &Value| {
                p.pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    == a.name
            };
            if pods_on(api, node, &a.namespace).await.iter().any(uses) {
                by_rules(a)
            } else {
                no_relation()
            }
        }
        ("pods", "") if a.verb == "delete" => own_pod(api, node, a).await,
        ("pods", "eviction") => own_pod(api, node, a).await,
        ("leases", "") if !a.name.is_empty() && (a.name != node || a.namespace != LEASE_NS) => {
            Decision::Deny(format!(
                "can only access node lease with the same name as the requesting node '{node}'"
            ))
        }
        _ => by_rules(a),
    }
}

const LEASE_NS: &str = "kube-node-lease";

fn by_rules(a: &Attributes) -> Decision {
    if node_rules().iter().any(|r| r.allows(a)) {
        Decision::Allow("node authorizer".into())
    } else {
        Decision::Deny(String::new())
    }
}

async fn own_pod(api: &Api, node: &str, a: &Attributes) -> Decision {
    let on_node = pods_on(api, node, &a.namespace)
        .await
        .iter()
        .any(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(&a.name));
    if on_node {
        by_rules(a)
    } else {
        Decision::Deny(format!("node '{node}' can only modify pods bound to it"))
    }
}

/// The pods of `namespace` bound to `node`.
async fn pods_on(api: &Api, node: &str, namespace: &str) -> Vec<Value> {
    let Some(res) = api.registry.find("", "v1", "pods") else {
        return Vec::new();
    };
    let Ok(list) = api
        .store
        .list(&res.ns_prefix(Some(namespace)), 0, None, None)
        .await
    else {
        return Vec::new();
    };
    list.items
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .collect()
}

/// The `(resource, name)` of every Secret, ConfigMap and PVC a pod uses.
pub fn references(pod: &Value) -> Vec<(&'static str, &str)> {
    fn list<'a>(v: &'a Value, k: &str) -> &'a [Value] {
        v.get(k)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
    fn at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
        v.pointer(p).and_then(Value::as_str)
    }
    let mut out = Vec::new();
    let spec = &pod["spec"];
    for s in list(spec, "imagePullSecrets") {
        out.push(("secrets", at(s, "/name")));
    }
    for v in list(spec, "volumes") {
        out.push(("secrets", at(v, "/secret/secretName")));
        out.push(("configmaps", at(v, "/configMap/name")));
        out.push((
            "persistentvolumeclaims",
            at(v, "/persistentVolumeClaim/claimName"),
        ));
        for src in list(&v["projected"], "sources") {
            out.push(("secrets", at(src, "/secret/name")));
            out.push(("configmaps", at(src, "/configMap/name")));
        }
    }
    for kind in ["initContainers", "containers", "ephemeralContainers"] {
        for c in list(spec, kind) {
            for e in list(c, "env") {
                out.push(("secrets", at(e, "/valueFrom/secretKeyRef/name")));
                out.push(("configmaps", at(e, "/valueFrom/configMapKeyRef/name")));
            }
            for e in list(c, "envFrom") {
                out.push(("secrets", at(e, "/secretRef/name")));
                out.push(("configmaps", at(e, "/configMapRef/name")));
            }
        }
    }
    out.into_iter()
        .filter_map(|(kind, name)| Some((kind, name?)))
        .collect()
}

/// NodeRestriction on writes with an object: a node creates or changes only its own Node and
/// Lease, creates only mirror pods bound to itself, and updates only its own pods' status.
pub fn admit(res: &Resource, ctx: &Ctx, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let Some(node) = node_of(&ctx.user) else {
        return Ok(());
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let deny = |msg: String| Err(ApiError::forbidden(msg));
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "nodes") if name != node => deny(format!(
            "node \"{node}\" is not allowed to modify node \"{name}\""
        )),
        ("coordination.k8s.io", "leases")
            if name != node || ctx.path.namespace.as_deref() != Some(LEASE_NS) =>
        {
            deny(format!(
                "node \"{node}\" is not allowed to modify lease \"{name}\""
            ))
        }
        ("", "pods") => {
            let bound =
                |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
            match old {
                None => {
                    let mirror = obj
                        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                        .is_some();
                    if !mirror {
                        return deny(format!(
                            "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                        ));
                    }
                    if !bound(obj) {
                        return deny(format!(
                            "node \"{node}\" can only create pods with spec.nodeName set to itself"
                        ));
                    }
                    Ok(())
                }
                Some(old) if !bound(old) => deny(format!(
                    "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                )),
                Some(_) => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pods_references_are_its_secrets_config_maps_and_claims() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "configMap": {"name": "cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "pcm"}}]}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "envfrom"}}]}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "envcm", "key": "k"}}}]}]}});
        let mut refs = references(&pod);
        refs.sort();
        assert_eq!(
            refs,
            vec![
                ("configmaps", "cm"),
                ("configmaps", "envcm"),
                ("configmaps", "pcm"),
                ("persistentvolumeclaims", "data"),
                ("secrets", "envfrom"),
                ("secrets", "proj"),
                ("secrets", "pull"),
                ("secrets", "vol"),
            ]
        );
    }

    #[test]
    fn only_a_nodes_credentials_are_a_node() {
        assert_eq!(node_of(&node_user("n1")), Some("n1"));
        let mut fake = node_user("n1");
        fake.groups = vec!["system:authenticated".into()];
        assert_eq!(node_of(&fake), None);
    }
}
