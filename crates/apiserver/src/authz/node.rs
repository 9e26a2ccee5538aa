//! The node authorizer and NodeRestriction: a node's credentials (`system:node:<name>` in
//! group `system:nodes`) read only the Secrets, ConfigMaps, PVCs and ServiceAccount tokens of
//! pods bound to that node, and write only its own Node and Lease and its own pods' status
//! (and, beyond upstream, remove finalizers of the PersistentVolumes pinned to it alone).

use std::sync::OnceLock;

use serde_json::Value;

use super::super::Api;
use super::super::auth::UserInfo;
use super::super::context::Ctx;
use super::super::registry::Resource;
use super::super::status::{ApiError, ApiResult, qualified};
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
    "get | - | persistentvolumeclaims",
    // Beyond upstream's system:node: a node removes the local-path cleanup finalizer of the
    // volumes pinned to it alone (the authorizer and NodeRestriction below narrow it to that).
    "get patch update | - | persistentvolumes",
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
    let graph_groups = ["", "coordination.k8s.io", "storage.k8s.io"];
    if !a.resource_request || !graph_groups.contains(&a.group.as_str()) {
        return by_rules(a);
    }
    let no_relation = || {
        Decision::Deny(format!(
            "no relationship found between node '{node}' and this object"
        ))
    };
    match (a.resource.as_str(), a.subresource.as_str()) {
        ("persistentvolumeclaims", "status") => {
            let wanted = ("persistentvolumeclaims", a.name.as_str());
            match pods_on(api, node, Some(&a.namespace)).await {
                pods if pods.iter().any(|p| references(p).contains(&wanted)) => by_rules(a),
                _ => no_relation(),
            }
        }
        ("persistentvolumes", "") => {
            if a.name.is_empty() {
                return no_relation();
            }
            // Beyond upstream: a node also reads the volumes pinned to it, and learns that a
            // volume is gone (a 404 says only that no volume has that name); it changes only
            // the volumes pinned to it alone (the local-path cleanup finalizer, kubelet
            // `claims`). A store that cannot answer denies.
            let pv = match object(api, "", "persistentvolumes", None, &a.name).await {
                Ok(pv) => pv,
                Err(e) => return Decision::Deny(format!("cannot check persistentvolume: {e}")),
            };
            let related = match (a.verb.as_str(), pv) {
                ("get", None) => true,
                ("get", Some(pv)) => {
                    pinned_to(&pv, node) || volume_of_claims_used(api, node).await.contains(&a.name)
                }
                ("patch" | "update", Some(pv)) => pinned_to(&pv, node),
                _ => false,
            };
            if related { by_rules(a) } else { no_relation() }
        }
        ("volumeattachments", "") => {
            let attached_here = a.verb == "get"
                && object(api, "storage.k8s.io", "volumeattachments", None, &a.name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|v| {
                        v.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    });
            if attached_here {
                by_rules(a)
            } else {
                no_relation()
            }
        }
        ("csinodes", "") if !a.name.is_empty() && a.name != node => Decision::Deny(format!(
            "can only access CSINode with the same name as the requesting node '{node}'"
        )),
        ("secrets" | "configmaps" | "persistentvolumeclaims", "") => {
            if !matches!(a.verb.as_str(), "get" | "list" | "watch") || a.name.is_empty() {
                return Decision::Deny(format!(
                    "can only read individual {} of pods bound to node '{node}'",
                    a.resource
                ));
            }
            let wanted = (a.resource.as_str(), a.name.as_str());
            match pods_on(api, node, Some(&a.namespace)).await {
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
            if pods_on(api, node, Some(&a.namespace))
                .await
                .iter()
                .any(uses)
            {
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
    let on_node = pods_on(api, node, Some(&a.namespace))
        .await
        .iter()
        .any(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(&a.name));
    if on_node {
        by_rules(a)
    } else {
        Decision::Deny(format!("node '{node}' can only modify pods bound to it"))
    }
}

/// One stored object, `None` if there is none; an error if the store fails or the stored
/// value does not parse (callers deny then, never take it for "no such object").
async fn object(
    api: &Api,
    group: &str,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, String> {
    let res = api
        .registry
        .find(group, "v1", plural)
        .ok_or_else(|| format!("no resource {plural}"))?;
    let rec = api
        .store
        .get(&res.key(ns, name))
        .await
        .map_err(|e| e.to_string())?;
    rec.map(|rec| serde_json::from_slice(&rec.value).map_err(|e| e.to_string()))
        .transpose()
}

/// Whether a volume's required node affinity admits only `node`: every term requires
/// `kubernetes.io/hostname In [node]` (a local volume of that node).
fn pinned_to(pv: &Value, node: &str) -> bool {
    let terms = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    !terms.is_empty()
        && terms.iter().all(|t| {
            t.get("matchExpressions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|e| {
                    e.get("key").and_then(Value::as_str) == Some("kubernetes.io/hostname")
                        && e.get("operator").and_then(Value::as_str) == Some("In")
                        && e.get("values").and_then(Value::as_array).is_some_and(|v| {
                            !v.is_empty() && v.iter().all(|x| x.as_str() == Some(node))
                        })
                })
        })
}

/// The PersistentVolumes bound to the claims of the node's pods.
async fn volume_of_claims_used(api: &Api, node: &str) -> Vec<String> {
    let mut out = Vec::new();
    for pod in pods_on(api, node, None).await {
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        for (kind, claim) in references(&pod) {
            if kind != "persistentvolumeclaims" {
                continue;
            }
            if let Ok(Some(pvc)) = object(api, "", "persistentvolumeclaims", Some(ns), claim).await
                && let Some(v) = pvc.pointer("/spec/volumeName").and_then(Value::as_str)
            {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// The pods of `namespace` (or of all) bound to `node`.
async fn pods_on(api: &Api, node: &str, namespace: Option<&str>) -> Vec<Value> {
    let Some(res) = api.registry.find("", "v1", "pods") else {
        return Vec::new();
    };
    let Ok(list) = api
        .store
        .list(&res.ns_prefix(namespace), 0, None, None)
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
/// Lease (not its taints, nor labels reserved to the cluster), creates only mirror pods bound
/// to itself that use no credentials, and updates only its own pods' status.
pub fn admit(res: &Resource, ctx: &Ctx, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let Some(node) = node_of(&ctx.user) else {
        return Ok(());
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let deny = |msg: String| {
        let mut e = ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: {msg}",
            qualified(&res.group, &res.plural)
        ));
        e.details = Some(serde_json::json!({"name": name, "group": res.group, "kind": res.plural}));
        Err(e)
    };
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "nodes") if name != node => deny(format!(
            "node \"{node}\" is not allowed to modify node \"{name}\""
        )),
        ("", "nodes") => match own_node_change(obj, old) {
            Some(what) => deny(format!("node \"{node}\" is not allowed to {what}")),
            None => Ok(()),
        },
        ("coordination.k8s.io", "leases")
            if name != node || ctx.path.namespace.as_deref() != Some(LEASE_NS) =>
        {
            deny(format!(
                "node \"{node}\" is not allowed to modify lease \"{name}\""
            ))
        }
        ("", "persistentvolumes") => match old {
            Some(old) if only_finalizers_removed(obj, old) => Ok(()),
            _ => deny(format!(
                "node \"{node}\" can only remove finalizers of persistentvolumes"
            )),
        },
        ("", "pods") => {
            let bound =
                |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
            match old {
                None => match mirror_pod_problem(node, obj) {
                    Some(msg) => deny(msg),
                    None if !bound(obj) => deny(format!(
                        "node \"{node}\" can only create pods with spec.nodeName set to itself"
                    )),
                    None => Ok(()),
                },
                Some(old) if !bound(old) => deny(format!(
                    "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                )),
                Some(_) => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Whether `obj` is `old` with some of its finalizers removed and nothing else changed that
/// anyone reads (the metadata the server keeps aside).
fn only_finalizers_removed(obj: &Value, old: &Value) -> bool {
    let finalizers = |v: &Value| -> Vec<Value> {
        v.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (new_f, old_f) = (finalizers(obj), finalizers(old));
    let same = |p: &str| obj.pointer(p) == old.pointer(p);
    new_f.iter().all(|f| old_f.contains(f))
        && [
            "/spec",
            "/status",
            "/metadata/name",
            "/metadata/labels",
            "/metadata/annotations",
            "/metadata/ownerReferences",
            "/metadata/deletionTimestamp",
        ]
        .iter()
        .all(|p| same(p))
}

/// Whether a pod is a mirror pod (the node's view of a static pod).
pub fn is_mirror_pod(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
}

/// Why a node may not create this pod: only mirror pods, owned by nothing but the node, that
/// reach no credential (a node could otherwise read any Secret by naming it in a pod).
fn mirror_pod_problem(node: &str, pod: &Value) -> Option<String> {
    if !is_mirror_pod(pod) {
        return Some(format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
        ));
    }
    let spec = &pod["spec"];
    let set = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    if set("serviceAccountName") || set("serviceAccount") {
        return Some(format!(
            "node \"{node}\" can not create pods that use service accounts"
        ));
    }
    if let Some((kind, _)) = references(pod).first() {
        return Some(format!(
            "node \"{node}\" can not create pods that reference {kind}"
        ));
    }
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for v in volumes.into_iter().flatten() {
        for kind in ["projected", "ephemeral", "csi"] {
            if v.get(kind).is_some() {
                return Some(format!(
                    "node \"{node}\" can not create pods that use {kind} volumes"
                ));
            }
        }
    }
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array);
    let foreign_owner = owners.into_iter().flatten().any(|o| {
        o.get("kind").and_then(Value::as_str) != Some("Node")
            || o.get("name").and_then(Value::as_str) != Some(node)
    });
    if foreign_owner {
        return Some(format!(
            "node \"{node}\" can only create pods with an owner reference set to itself"
        ));
    }
    None
}

/// What a node may not change on its own Node: taints after registration, labels in the
/// cluster's domains other than its own kubelet labels, and its pod range (the node IPAM
/// controller gives it; a node choosing its own could take another's traffic on the overlay).
fn own_node_change(obj: &Value, old: Option<&Value>) -> Option<String> {
    for (ptr, field) in [
        ("/spec/podCIDR", "spec.podCIDR"),
        ("/spec/podCIDRs", "spec.podCIDRs"),
    ] {
        let set = |v: &Value| match v.pointer(ptr) {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        if set(obj) && old.is_none_or(|old| old.pointer(ptr) != obj.pointer(ptr)) {
            return Some(format!(
                "set {field} (pod ranges are assigned by the node IPAM controller)"
            ));
        }
    }
    let labels = |v: &Value| {
        v.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let new_labels = labels(obj);
    let old_labels = old.map(labels).unwrap_or_default();
    let mut changed: Vec<&String> = new_labels
        .iter()
        .filter(|(k, v)| old_labels.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(old_labels.keys().filter(|k| !new_labels.contains_key(*k)))
        .filter(|k| !kinglet_core::node_labels::node_may_set(k))
        .collect();
    changed.sort();
    if !changed.is_empty() {
        let keys: Vec<&str> = changed.iter().map(|k| k.as_str()).collect();
        return Some(format!("modify labels: {}", keys.join(", ")));
    }
    if let Some(old) = old
        && obj.pointer("/spec/taints") != old.pointer("/spec/taints")
    {
        return Some("modify taints".into());
    }
    None
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
    fn nodes_create_only_mirror_pods_that_reach_no_credentials() {
        let mirror = |spec: serde_json::Value| {
            json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "x"}},
                "spec": spec})
        };
        let plain = mirror(json!({"nodeName": "n1", "containers": [{"name": "c"}]}));
        assert_eq!(mirror_pod_problem("n1", &plain), None);
        let mut not_mirror = plain.clone();
        not_mirror["metadata"]["annotations"] = json!({});
        let refused = [
            not_mirror,
            mirror(json!({"serviceAccountName": "admin"})),
            mirror(json!({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]})),
            mirror(
                json!({"containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "x"}}]}]}),
            ),
            mirror(json!({"volumes": [{"name": "p", "projected": {"sources": []}}]})),
            json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "r"}]}, "spec": {}}),
        ];
        for pod in refused {
            assert!(mirror_pod_problem("n1", &pod).is_some(), "{pod}");
        }
    }

    #[test]
    fn a_node_keeps_its_taints_and_the_clusters_labels() {
        let node = |labels: serde_json::Value, taints: serde_json::Value| json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}});
        let old = node(
            json!({"kubernetes.io/hostname": "n1"}),
            json!([{"key": "a", "effect": "NoSchedule"}]),
        );
        let ok = node(
            json!({"kubernetes.io/hostname": "n1", "mine": "x", "topology.kubernetes.io/zone": "z", "kubelet.kubernetes.io/x": "1"}),
            json!([{"key": "a", "effect": "NoSchedule"}]),
        );
        assert_eq!(own_node_change(&ok, Some(&old)), None);
        let role = node(
            json!({"node-role.kubernetes.io/control-plane": ""}),
            json!([{"key": "a", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            own_node_change(&role, Some(&old)).as_deref(),
            Some("modify labels: node-role.kubernetes.io/control-plane")
        );
        let restricted = node(
            json!({"kubernetes.io/hostname": "n1", "node-restriction.kubernetes.io/x": "y"}),
            json!([]),
        );
        assert!(own_node_change(&restricted, None).is_some());
        let untainted = node(json!({"kubernetes.io/hostname": "n1"}), json!([]));
        assert_eq!(
            own_node_change(&untainted, Some(&old)).as_deref(),
            Some("modify taints")
        );
        // At registration the node brings its own taints.
        assert_eq!(own_node_change(&old, None), None);
    }

    #[test]
    fn a_node_never_chooses_its_pod_range() {
        let node = |spec: serde_json::Value| json!({"metadata": {"name": "n1"}, "spec": spec});
        let bare = node(json!({}));
        let assigned = node(json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}));
        // Registering with a range of its choosing, or setting one later: refused.
        for (obj, old) in [
            (node(json!({"podCIDR": "10.42.1.0/24"})), None),
            (node(json!({"podCIDRs": ["10.42.1.0/24"]})), None),
            (assigned.clone(), Some(&bare)),
            (
                node(json!({"podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.9.0/24"]})),
                Some(&assigned),
            ),
        ] {
            let refused = own_node_change(&obj, old);
            assert!(
                refused
                    .as_deref()
                    .is_some_and(|r| r.starts_with("set spec.podCIDR")),
                "{obj} over {old:?}: {refused:?}"
            );
        }
        // Registering without one, keeping the one given, or empty values: fine.
        assert_eq!(own_node_change(&bare, None), None);
        assert_eq!(
            own_node_change(&node(json!({"podCIDR": "", "podCIDRs": []})), None),
            None
        );
        assert_eq!(own_node_change(&assigned, Some(&assigned)), None);
    }

    #[test]
    fn a_node_reads_only_the_local_volumes_pinned_to_it_alone() {
        let pv = |values: serde_json::Value| {
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": values}]}]}}}})
        };
        assert!(pinned_to(&pv(json!(["n1"])), "n1"));
        assert!(!pinned_to(&pv(json!(["n2"])), "n1"));
        assert!(!pinned_to(&pv(json!(["n1", "n2"])), "n1"));
        assert!(!pinned_to(&pv(json!([])), "n1"));
        assert!(!pinned_to(&json!({"spec": {}}), "n1"));
        let other_key = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["n1"]}]}]}}}});
        assert!(!pinned_to(&other_key, "n1"));
    }

    #[test]
    fn a_node_only_removes_finalizers_of_volumes() {
        let old = json!({"metadata": {"name": "pvc-1", "finalizers": ["a", "kinglet.io/local-path-cleanup"]},
            "spec": {"hostPath": {"path": "/var/lib/kinglet/storage/pvc-1_ns_c"}}});
        let mut removed = old.clone();
        removed["metadata"]["finalizers"] = json!(["a"]);
        assert!(only_finalizers_removed(&removed, &old));
        assert!(only_finalizers_removed(&old, &old));
        let mut added = old.clone();
        added["metadata"]["finalizers"] = json!(["a", "b"]);
        let mut moved = removed.clone();
        moved["spec"]["hostPath"]["path"] = json!("/etc");
        let mut unannotated = removed.clone();
        unannotated["metadata"]["annotations"] = json!({"x": "y"});
        for obj in [added, moved, unannotated] {
            assert!(!only_finalizers_removed(&obj, &old), "{obj}");
        }
    }

    #[tokio::test]
    async fn a_node_changes_only_volumes_pinned_to_it_and_a_bad_store_denies() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::test_api(dir.path()).await;
        let res = api.registry.find("", "v1", "persistentvolumes").unwrap();
        let pinned = |n: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "x"},
                "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}}}})
        };
        for (name, value) in [
            ("mine", serde_json::to_vec(&pinned("n1")).unwrap()),
            ("theirs", serde_json::to_vec(&pinned("n2")).unwrap()),
            ("garbled", b"{not json".to_vec()),
        ] {
            api.store
                .create(&res.key(None, name), value.into())
                .await
                .unwrap();
        }
        let ask = |verb: &str, name: &str| Attributes {
            user: std::sync::Arc::new(node_user("n1")),
            verb: verb.into(),
            resource_request: true,
            resource: "persistentvolumes".into(),
            name: name.into(),
            ..Default::default()
        };
        let mut wrong = Vec::new();
        for (verb, name, allowed) in [
            ("get", "mine", true),
            ("patch", "mine", true),
            ("update", "mine", true),
            ("delete", "mine", false),
            ("get", "theirs", false),
            ("patch", "theirs", false),
            // Missing: reading says 404; nothing to change.
            ("get", "missing", true),
            ("patch", "missing", false),
            // What the store cannot give is never taken for "missing".
            ("get", "garbled", false),
            ("patch", "garbled", false),
            ("list", "", false),
        ] {
            let got = matches!(
                authorize(&api, "n1", &ask(verb, name)).await,
                Decision::Allow(_)
            );
            if got != allowed {
                wrong.push(format!("{verb} {name}: allowed {got}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn only_a_nodes_credentials_are_a_node() {
        assert_eq!(node_of(&node_user("n1")), Some("n1"));
        let mut fake = node_user("n1");
        fake.groups = vec!["system:authenticated".into()];
        assert_eq!(node_of(&fake), None);
    }
}
