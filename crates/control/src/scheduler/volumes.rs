//! The scheduler's part of volume binding (upstream's VolumeBinding plugin): a pod's claims
//! must exist; a bound claim's volume limits the pod to the nodes its node affinity admits; an
//! unbound claim of a `WaitForFirstConsumer` class needs a node where an available volume
//! fits it or where its class can provision one. Once a node is chosen the claims are
//! annotated `volume.kubernetes.io/selected-node` and the pod is bound only after the
//! persistent-volume binder has bound every claim (upstream's PreBind waits likewise; here
//! the pod waits in the queue instead of blocking the scheduling loop).
//!
//! Unlike upstream, the scheduler does not write the volume's claimRef itself for a matching
//! pre-existing volume: the binder binds it, restricted to volumes the selected node can use.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::controllers::persistentvolume::{
    SELECTED_NODE, admits_node, claim_class, delays_binding, find_match,
};

/// Why a pod cannot be scheduled whatever the node (upstream's PreFilter rejections).
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
/// Node-level reasons (upstream's `ErrReason*`).
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const PV_MISSING: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";

/// What a pod's claims require of its node.
#[derive(Default)]
pub struct PodVolumes {
    /// The volumes of bound claims (None: the claim names a volume that does not exist).
    bound: Vec<Option<PersistentVolume>>,
    /// Unbound claims of delayed-binding classes, with what could serve them.
    delayed: Vec<Delayed>,
}

struct Delayed {
    claim: PersistentVolumeClaim,
    /// Its class can provision a volume on any node.
    provisionable: bool,
    /// The volumes that exist for its class.
    candidates: Vec<PersistentVolume>,
}

/// Where a pod's claims stand.
pub enum Claims {
    /// No claims, or every one is ready for the pod to be placed by `PodVolumes`.
    Ready(PodVolumes),
    /// Claims were given a node and their binding is under way: try again soon, quietly.
    Binding,
    /// The pod cannot be scheduled on any node (upstream's PreFilter message).
    Unschedulable(String),
}

fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

pub fn uses_claims(pod: &Pod) -> bool {
    !claim_names(pod).is_empty()
}

/// Reads the pod's claims and their volumes and classes through the API.
pub async fn gather(client: &kube::Client, pod: &Pod) -> kube::Result<Claims> {
    let ns = pod.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let mut out = PodVolumes::default();
    let mut all_volumes: Option<Vec<PersistentVolume>> = None;
    let mut binding = false;
    for name in claim_names(pod) {
        let Some(claim) = claims.get_opt(&name).await? else {
            return Ok(Claims::Unschedulable(format!(
                "persistentvolumeclaim \"{name}\" not found"
            )));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(Claims::Unschedulable(format!(
                "persistentvolumeclaim \"{name}\" is being deleted"
            )));
        }
        let volume_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty());
        if let Some(v) = volume_name {
            let volume = volumes.get_opt(&v).await?;
            // Named but not bound yet: the binder is completing it.
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            binding |= volume.is_some() && !bound;
            out.bound.push(volume);
            continue;
        }
        let class_name = claim_class(&claim).to_string();
        let class = match class_name.as_str() {
            "" => None,
            n => classes.get_opt(n).await?,
        };
        if !delays_binding(class.as_ref()) {
            return Ok(Claims::Unschedulable(UNBOUND_IMMEDIATE.into()));
        }
        if claim.annotations().contains_key(SELECTED_NODE) {
            binding = true;
            continue;
        }
        if all_volumes.is_none() {
            all_volumes = Some(volumes.list(&ListParams::default()).await?.items);
        }
        let candidates = all_volumes
            .iter()
            .flatten()
            .filter(|v| {
                v.spec
                    .as_ref()
                    .and_then(|s| s.storage_class_name.as_deref())
                    == Some(&class_name)
            })
            .cloned()
            .collect();
        let provisionable = class
            .as_ref()
            .is_some_and(|c| c.provisioner != "kubernetes.io/no-provisioner");
        out.delayed.push(Delayed {
            claim,
            provisionable,
            candidates,
        });
    }
    Ok(if binding {
        Claims::Binding
    } else {
        Claims::Ready(out)
    })
}

impl PodVolumes {
    /// Why node `name` (with `labels`) cannot serve the pod's claims, if it cannot.
    pub fn reason(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<&'static str> {
        for v in &self.bound {
            match v {
                None => return Some(PV_MISSING),
                Some(v) if !admits_node(v, name, labels) => return Some(NODE_CONFLICT),
                Some(_) => {}
            }
        }
        let unserved = self.delayed.iter().any(|d| {
            !d.provisionable
                && find_match(&d.claim, &d.candidates, Some((name, labels)), true).is_none()
        });
        unserved.then_some(BIND_CONFLICT)
    }

    /// Whether claims wait for a node before they bind.
    pub fn has_delayed(&self) -> bool {
        !self.delayed.is_empty()
    }

    /// Gives the delayed claims `node` (upstream's PreBind annotation).
    pub async fn select_node(&self, client: &kube::Client, node: &str) -> kube::Result<()> {
        for d in &self.delayed {
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &d.claim.namespace().unwrap_or_default());
            let patch = serde_json::json!({"metadata": {
                "annotations": {SELECTED_NODE: node},
                "resourceVersion": d.claim.resource_version(),
            }});
            api.patch(
                &d.claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(
        name: &str,
        class: &str,
        size: &str,
        node: Option<&str>,
        claim: Option<&str>,
    ) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"storageClassName": class, "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/x"}},
            "status": {"phase": "Available"}});
        if let Some(n) = node {
            v["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}});
        }
        if let Some(c) = claim {
            v["spec"]["claimRef"] =
                json!({"namespace": "ns1", "name": c, "uid": format!("uid-{c}")});
            v["status"]["phase"] = json!("Bound");
        }
        serde_json::from_value(v).unwrap()
    }

    fn pvc(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns1", "uid": format!("uid-{name}")},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}))
        .unwrap()
    }

    fn labels(node: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("kubernetes.io/hostname".to_string(), node.to_string())])
    }

    /// Each case: the pod's claims' situation, then the reason per node (a, b), `-` for none.
    #[test]
    fn nodes_are_filtered_by_their_volumes() {
        let cases: Vec<(&str, PodVolumes, [&str; 2])> = vec![
            ("no claims", PodVolumes::default(), ["-", "-"]),
            (
                "bound to a volume on a",
                PodVolumes {
                    bound: vec![Some(pv("v", "local", "1Gi", Some("a"), Some("c")))],
                    delayed: vec![],
                },
                ["-", NODE_CONFLICT],
            ),
            (
                "bound to a volume without node affinity",
                PodVolumes {
                    bound: vec![Some(pv("v", "nfs", "1Gi", None, Some("c")))],
                    delayed: vec![],
                },
                ["-", "-"],
            ),
            (
                "bound to a missing volume",
                PodVolumes {
                    bound: vec![None],
                    delayed: vec![],
                },
                [PV_MISSING, PV_MISSING],
            ),
            (
                "delayed, provisionable",
                PodVolumes {
                    bound: vec![],
                    delayed: vec![Delayed {
                        claim: pvc("c", "local-path", "1Gi"),
                        provisionable: true,
                        candidates: vec![],
                    }],
                },
                ["-", "-"],
            ),
            (
                "delayed, static volumes on b only",
                PodVolumes {
                    bound: vec![],
                    delayed: vec![Delayed {
                        claim: pvc("c", "local", "1Gi"),
                        provisionable: false,
                        candidates: vec![
                            pv("on-b", "local", "2Gi", Some("b"), None),
                            pv("small-on-a", "local", "10Mi", Some("a"), None),
                        ],
                    }],
                },
                [BIND_CONFLICT, "-"],
            ),
            (
                "delayed, the only volume taken",
                PodVolumes {
                    bound: vec![],
                    delayed: vec![Delayed {
                        claim: pvc("c", "local", "1Gi"),
                        provisionable: false,
                        candidates: vec![pv("taken", "local", "2Gi", None, Some("other"))],
                    }],
                },
                [BIND_CONFLICT, BIND_CONFLICT],
            ),
        ];
        let mut failures = Vec::new();
        for (case, volumes, want) in cases {
            let got = ["a", "b"].map(|n| volumes.reason(n, &labels(n)).unwrap_or("-"));
            if got != want {
                failures.push(format!("{case}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
