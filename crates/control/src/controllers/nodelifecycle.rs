//! Node lifecycle and pod garbage collection.
//! - A node whose Lease (or Ready heartbeat) is older than 40 s becomes Ready=Unknown and gets
//!   the `node.kubernetes.io/unreachable` taints; a NotReady node gets `not-ready` taints; the
//!   taints go when the node is Ready again.
//! - Pods on a node with a NoExecute taint are evicted at once unless they tolerate it, or after
//!   their `tolerationSeconds` (300 s by default admission).
//! - Pods bound to nodes that no longer exist are deleted, and terminated pods beyond 12,500.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use kube::runtime::reflector::Store;

use super::informers::Informers;
use super::util::Context;

const GRACE_SECS: i64 = 40;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

fn ready_status(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Seconds since the node last showed life.
fn heartbeat_age(n: &Node, lease: Option<&Lease>, now: i64) -> i64 {
    let lease_t = lease
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
        .map(|t| t.0.as_second());
    let cond_t = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.as_second());
    let created = n
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    now - [lease_t, cond_t, created]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now)
}

/// Node conditions and the NoSchedule taints they bring.
const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

fn tolerates(tols: &[Toleration], t: &Taint) -> Option<Option<i64>> {
    tols.iter()
        .find(|tol| {
            let effect_ok = tol
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == t.effect);
            let op = tol.operator.as_deref().unwrap_or("Equal");
            let key_ok = tol
                .key
                .as_deref()
                .map(|k| k == t.key)
                .unwrap_or(op == "Exists");
            let value_ok = op == "Exists"
                || tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("");
            effect_ok && key_ok && value_ok
        })
        .map(|tol| tol.toleration_seconds)
}

async fn sync(ctx: &Context, pod_cache: &Store<Pod>) -> kube::Result<()> {
    // Pods are read before the nodes are listed, so a pod bound to a node made since is not
    // taken for an orphan.
    let pods = pod_cache.state();
    let now = Timestamp::now().as_second();
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = nodes_api.list(&ListParams::default()).await?.items;
    let leases: HashMap<String, Lease> =
        Api::<Lease>::namespaced(ctx.client.clone(), "kube-node-lease")
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
    for n in &nodes {
        let name = n.name_any();
        let age = heartbeat_age(n, leases.get(&name), now);
        let ready = ready_status(n);
        let mut taints: Vec<Taint> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let before = taints.clone();
        let want_key = if age > GRACE_SECS {
            if ready.as_deref() != Some("Unknown") {
                let msg = "Kubelet stopped posting node status.";
                let conds: Vec<serde_json::Value> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                    .iter()
                    .map(|t| serde_json::json!({"type": t, "status": "Unknown", "reason": "NodeStatusUnknown", "message": msg, "lastTransitionTime": Timestamp::now().to_string()}))
                    .collect();
                let patch = serde_json::json!({"status": {"conditions": conds}});
                let _ = nodes_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await;
                ctx.event(
                    n,
                    false,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
            }
            Some(UNREACHABLE)
        } else if ready.as_deref() == Some("False") {
            Some(NOT_READY)
        } else if ready.as_deref() == Some("True") {
            None
        } else {
            // Never reported yet and still within the grace period: leave it be.
            continue;
        };
        taints.retain(|t| {
            !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != want_key)
        });
        if let Some(key) = want_key {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                    taints.push(Taint {
                        key: key.into(),
                        effect: effect.into(),
                        value: None,
                        time_added: (effect == "NoExecute").then(|| {
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now())
                        }),
                    });
                }
            }
        }
        // TaintNodesByCondition: pressure conditions keep new pods away.
        for (condition, key) in PRESSURE_TAINTS {
            let under = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == condition && c.status == "True")
                });
            let has = taints.iter().any(|t| t.key == key);
            if under && !has {
                taints.push(Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    value: None,
                    time_added: None,
                });
            } else if !under && has {
                taints.retain(|t| t.key != key);
            }
        }
        if taints != before {
            let patch = serde_json::json!({"spec": {"taints": taints}});
            let _ = nodes_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
    // Taint-based eviction and orphaned pods.
    let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n)).collect();
    collect_terminated(ctx, &pods).await;
    for p in pods.iter().map(|p| p.as_ref()) {
        let Some(node) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let Some(n) = by_name.get(&node) else {
            let _ = api
                .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                .await;
            continue;
        };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tols = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let evict = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoExecute")
            .any(|t| match tolerates(&tols, t) {
                None => true,
                Some(None) => false,
                Some(Some(secs)) => {
                    t.time_added
                        .as_ref()
                        .map(|a| a.0.as_second())
                        .unwrap_or(now)
                        + secs
                        <= now
                }
            });
        if evict {
            ctx.event(
                p,
                false,
                "TaintManagerEviction",
                format!(
                    "Marking for deletion Pod {}/{}",
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                ),
            )
            .await;
            let _ = api.delete(&p.name_any(), &DeleteParams::default()).await;
        }
    }
    Ok(())
}

/// Terminated pods beyond this many are deleted, oldest first (upstream's default).
const TERMINATED_POD_THRESHOLD: usize = 12_500;

/// Pod GC of terminated pods over the threshold.
async fn collect_terminated(ctx: &Context, pods: &[Arc<Pod>]) {
    let mut done: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| super::util::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    if done.len() <= TERMINATED_POD_THRESHOLD {
        return;
    }
    done.sort_by_key(|p| {
        p.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    });
    for p in &done[..done.len() - TERMINATED_POD_THRESHOLD] {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let _ = api
            .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
            .await;
    }
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    informers.pods.synced().await;
    let pods = informers.pods.store();
    loop {
        if let Err(e) = sync(&ctx, &pods).await {
            tracing::debug!("node lifecycle: {e}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
