//! Helpers shared by the controllers: owner references, selectors, pod state, events.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

pub use kinglet_core::events::Context;
pub use kinglet_core::pods::{
    controller_ref, controller_uid, is_available, is_ready, is_terminal, selects,
};

/// Pods a controller created or deleted that its cache has not shown yet, per owner uid, so a
/// stale cache never makes it act twice (upstream's "expectations").
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

/// (names to see created, names to see gone, since)
type Pending = (HashSet<String>, HashSet<String>, Instant);

/// Expectations not met within this time are dropped.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Expectations {
    pub fn expect(&self, owner: &str, adds: HashSet<String>, dels: HashSet<String>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(owner.to_string(), (adds, dels, Instant::now()));
    }

    /// Whether the cache (`pods`, namespace `ns`) has caught up with `owner`'s last actions.
    pub fn satisfied(
        &self,
        owner: &str,
        pods: &kube::runtime::reflector::Store<Pod>,
        ns: &str,
    ) -> bool {
        let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some((adds, dels, since)) = all.get_mut(owner) else {
            return true;
        };
        let present = |name: &String| {
            pods.get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                .is_some()
        };
        adds.retain(|n| !present(n));
        dels.retain(present);
        if (adds.is_empty() && dels.is_empty()) || since.elapsed() > EXPECTATION_TTL {
            all.remove(owner);
            return true;
        }
        false
    }
}

/// Records `template` as a ControllerRevision of `owner` (named `<owner>-<hash>`, labelled like the
/// pods so `kubectl rollout history/undo` find it), as DaemonSets and StatefulSets keep them.
pub async fn ensure_revision<K>(
    ctx: &Context,
    owner: &K,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    hash: &str,
) -> kube::Result<()>
where
    K: Resource<DynamicType = ()>,
{
    use k8s_openapi::api::apps::v1::ControllerRevision;
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let api: kube::Api<ControllerRevision> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("{}-{hash}", owner.meta().name.clone().unwrap_or_default());
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let uid = owner.meta().uid.clone();
    let existing = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|r| controller_uid(&r.metadata) == uid.as_deref())
        .map(|r| r.revision)
        .max()
        .unwrap_or(0);
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("controller-revision-hash".into(), hash.into());
    // Upstream's revision data: a strategic patch that replaces the whole template.
    let mut data_template = serde_json::to_value(template).map_err(kube::Error::SerdeError)?;
    data_template["$patch"] = serde_json::json!("replace");
    let cr: ControllerRevision = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [controller_ref(owner)]},
        "data": {"spec": {"template": data_template}},
        "revision": existing + 1,
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.create(&kube::api::PostParams::default(), &cr).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Merge-patches `status` into `obj`'s status subresource.
pub async fn merge_status<K>(
    client: &kube::Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> kube::Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let meta = obj.meta();
    let api: kube::Api<K> = kube::Api::namespaced(
        client.clone(),
        meta.namespace.as_deref().unwrap_or_default(),
    );
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        meta.name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// Upstream's annotation that makes a pod cheaper (lower) or dearer (higher) to delete.
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn node_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Pending (or no phase) < Unknown < Running, as upstream orders phases for deletion.
fn phase_ordinal(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn ready_since(p: &Pod) -> Option<Timestamp> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

fn deletion_cost(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Upstream's `afterOrZero`: a missing time first, then the later time first.
fn later_first(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Upstream's `logarithmicRankDiff` ordering: ages on a log2 scale (of nanoseconds), younger
/// first; equal ranks fall back to the uid, which is pseudo-random.
fn younger_first_log_scale(
    a: Timestamp,
    b: Timestamp,
    now: Timestamp,
    uids: (&Pod, &Pod),
) -> Ordering {
    let rank = |t: Timestamp| {
        let nanos = now.as_nanosecond() - t.as_nanosecond();
        if nanos > 0 {
            (nanos as f64).log2() as i64
        } else {
            -1
        }
    };
    rank(a)
        .cmp(&rank(b))
        .then_with(|| uids.0.metadata.uid.cmp(&uids.1.metadata.uid))
}

/// Compares two times the way upstream does for steps 6 and 8: on a log scale when `now` is
/// known and both times are set, else later (or missing) first.
fn recent_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    now: Option<Timestamp>,
    pods: (&Pod, &Pod),
) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    match (a, b, now) {
        (Some(a), Some(b), Some(now)) => younger_first_log_scale(a, b, now, pods),
        _ => later_first(a, b),
    }
}

/// One pod with what upstream ranks it by: how many active pods of its kin share its node.
struct Ranked<'a> {
    pod: &'a Pod,
    colocated: usize,
}

/// Upstream's `ActivePodsWithRanks.Less` (ReplicaSets) or, without `now`, `ActivePods.Less`
/// (Jobs), which has no deletion cost or colocation rank and compares times directly.
fn delete_before(a: &Ranked, b: &Ranked, now: Option<Timestamp>) -> Ordering {
    let (p, q) = (a.pod, b.pod);
    let unassigned = |p: &Pod| node_name(p).is_empty();
    let ready = |p: &Pod| is_ready(p);
    let ranked = now.is_some();
    let by_node = if node_name(p) != node_name(q) {
        unassigned(q).cmp(&unassigned(p))
    } else {
        Ordering::Equal
    };
    by_node
        .then_with(|| phase_ordinal(p).cmp(&phase_ordinal(q)))
        .then_with(|| ready(p).cmp(&ready(q)))
        .then_with(|| {
            if ranked {
                deletion_cost(p)
                    .cmp(&deletion_cost(q))
                    .then_with(|| b.colocated.cmp(&a.colocated))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| {
            if ready(p) && ready(q) {
                recent_first(ready_since(p), ready_since(q), now, (p, q))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| max_restarts(q).cmp(&max_restarts(p)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            recent_first(created(p), created(q), now, (p, q))
        })
}

fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

/// `pods` in the order a ReplicaSet deletes them (upstream's `getPodsToDelete`): `related` are
/// the active pods whose colocation counts (upstream: those of all ReplicaSets of the owner).
pub fn replicaset_deletion_order<'a>(
    pods: &[&'a Pod],
    related: &[&Pod],
    now: Timestamp,
) -> Vec<&'a Pod> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| is_active(p)) {
        *on_node.entry(node_name(p)).or_default() += 1;
    }
    let mut ranked: Vec<Ranked> = pods
        .iter()
        .map(|p| Ranked {
            pod: p,
            colocated: on_node.get(node_name(p)).copied().unwrap_or(0),
        })
        .collect();
    ranked.sort_by(|a, b| delete_before(a, b, Some(now)));
    ranked.into_iter().map(|r| r.pod).collect()
}

/// `pods` in the order a Job deletes surplus ones (upstream's `controller.ActivePods`).
pub fn job_deletion_order<'a>(pods: &[&'a Pod]) -> Vec<&'a Pod> {
    let mut ranked: Vec<Ranked> = pods
        .iter()
        .map(|p| Ranked {
            pod: p,
            colocated: 0,
        })
        .collect();
    ranked.sort_by(|a, b| delete_before(a, b, None));
    ranked.into_iter().map(|r| r.pod).collect()
}

/// Builders and a table checker shared by the controllers' plan tests.
#[cfg(test)]
pub mod testing {
    use k8s_openapi::jiff::Timestamp;
    use serde_json::Value;

    /// The failures of a table of cases, reported together.
    #[derive(Default)]
    pub struct Table(Vec<String>);

    impl Table {
        pub fn check<T: PartialEq + std::fmt::Debug>(&mut self, case: &str, got: T, want: T) {
            if got != want {
                self.0
                    .push(format!("{case}:\n   got {got:?}\n  want {want:?}"));
            }
        }

        pub fn done(self) {
            assert!(
                self.0.is_empty(),
                "{} case(s) failed:\n{}",
                self.0.len(),
                self.0.join("\n")
            );
        }
    }

    /// `patch` laid over `base`: objects merge key by key, `null` removes a key, anything else
    /// replaces.
    pub fn merged(base: Value, patch: Value) -> Value {
        match (base, patch) {
            (Value::Object(mut b), Value::Object(p)) => {
                for (k, v) in p {
                    let old = b.remove(&k).unwrap_or(Value::Null);
                    if !v.is_null() {
                        b.insert(k, merged(old, v));
                    }
                }
                Value::Object(b)
            }
            (_, p) => p,
        }
    }

    /// A typed object from JSON (panics on a malformed fixture).
    pub fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("fixture")
    }

    /// The fixed "now" of every plan test.
    pub fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).expect("time")
    }

    /// `secs` seconds before `now()`, as the API writes times.
    pub fn ago(secs: i64) -> String {
        Timestamp::from_second(now().as_second() - secs)
            .expect("time")
            .to_string()
    }
}
