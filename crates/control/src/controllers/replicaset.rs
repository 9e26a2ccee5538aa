//! ReplicaSet controller: keeps `spec.replicas` pods from the template, adopts matching
//! orphans, and reports status. "Expectations" (pods created or deleted but not yet seen in the
//! cache) stop it from acting twice on a stale view, as upstream's controller does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;

use super::informers::Informers;
use super::util::{
    Context, Expectations, controller_ref, controller_uid, is_available, is_ready, is_terminal,
    merge_status, replicaset_deletion_order, selects,
};

/// Most pods created in one reconcile (upstream's burst).
const MAX_BATCH: usize = 500;

struct RsCtx {
    ctx: Arc<Context>,
    pods: Store<Pod>,
    expectations: Expectations,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let tmpl = rs
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
        .unwrap_or_default();
    let mut meta = tmpl.metadata.unwrap_or_default();
    meta.generate_name = Some(format!("{}-", rs.name_any()));
    meta.name = None;
    meta.namespace = rs.namespace();
    meta.owner_references = Some(vec![controller_ref(rs)]);
    Pod {
        metadata: meta,
        spec: tmpl.spec,
        status: None,
    }
}

/// How a reconcile changes the number of pods.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    None,
    /// Create this many pods from the template.
    Create(usize),
    /// Delete these pods, in this order.
    Delete(Vec<String>),
}

/// What a reconcile does, decided from the ReplicaSet, the pods of its namespace and the time.
#[derive(Debug)]
struct Plan {
    /// Orphans the selector matches, to adopt: (name, uid).
    adopt: Vec<(String, Option<String>)>,
    change: Change,
    /// The status to write, if it differs.
    status: Option<ReplicaSetStatus>,
    requeue: Option<Duration>,
}

fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

/// Decides one reconcile of `rs` from the pods of its namespace (`pods`) at `now`; `settled` is
/// whether the cache has caught up with its last creates and deletes (its expectations).
fn plan(rs: &ReplicaSet, pods: &[&Pod], settled: bool, now: Timestamp) -> Plan {
    let mut plan = Plan {
        adopt: Vec::new(),
        change: Change::None,
        status: None,
        requeue: None,
    };
    if rs.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let spec = rs.spec.clone().unwrap_or_default();
    plan.adopt = pods
        .iter()
        .filter(|p| {
            controller_uid(&p.metadata).is_none()
                && p.metadata.deletion_timestamp.is_none()
                && selects(&spec.selector, &p.metadata)
        })
        .map(|p| (p.name_any(), p.uid()))
        .collect();
    // Adopted pods count from the next reconcile, once the cache shows them owned.
    let uid = rs.uid();
    let active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| controller_uid(&p.metadata) == uid.as_deref() && is_active(p))
        .collect();
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    if !settled {
        plan.requeue = Some(Duration::from_millis(500));
    } else if active.len() < desired {
        plan.change = Change::Create((desired - active.len()).min(MAX_BATCH));
    } else if active.len() > desired {
        let order = replicaset_deletion_order(&active, &active, now);
        let victims = order[..active.len() - desired].iter().map(|p| p.name_any());
        plan.change = Change::Delete(victims.collect());
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let status = status(rs, &active, now);
    if active
        .iter()
        .any(|p| is_ready(p) && !is_available(p, min_ready, now))
    {
        plan.requeue = Some(Duration::from_secs(min_ready.max(1) as u64));
    }
    if rs.status.as_ref() != Some(&status) {
        plan.status = Some(status);
    }
    plan
}

/// The status from what the cache shows of the pods (`live`: active and owned).
fn status(rs: &ReplicaSet, live: &[&Pod], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    ReplicaSetStatus {
        replicas: live.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| is_ready(p))),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}

/// Creates `want` pods in batches of 1, 2, 4, ... (upstream's slow start), stopping after a
/// batch with a failure; records what it created as expected.
async fn create_pods(rc: &RsCtx, rs: &ReplicaSet, want: usize) -> Result<(), Error> {
    let pods_api: Api<Pod> =
        Api::namespaced(rc.ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let mut created = HashSet::new();
    let mut batch = 1;
    let mut failure = None;
    // Decided here, not in the plan: a failed create ends the slow start early.
    while created.len() < want && failure.is_none() {
        let n = batch.min(want - created.len());
        let template = pod_from_template(rs);
        let pp = PostParams::default();
        let results =
            futures::future::join_all((0..n).map(|_| pods_api.create(&pp, &template))).await;
        for r in results {
            match r {
                Ok(p) => {
                    created.insert(p.name_any());
                }
                Err(e) => failure = Some(e),
            }
        }
        batch *= 2;
    }
    if !created.is_empty() {
        let message = format!("Created {} pod(s)", created.len());
        rc.ctx.event(rs, false, "SuccessfulCreate", message).await;
    }
    rc.expectations
        .expect(&rs.uid().unwrap_or_default(), created, HashSet::new());
    if let Some(e) = failure {
        let message = format!("Error creating: {e}");
        rc.ctx.event(rs, true, "FailedCreate", message).await;
        return Err(e.into());
    }
    Ok(())
}

async fn delete_pods(rc: &RsCtx, rs: &ReplicaSet, victims: Vec<String>) -> Result<(), Error> {
    let pods_api: Api<Pod> =
        Api::namespaced(rc.ctx.client.clone(), &rs.namespace().unwrap_or_default());
    for name in &victims {
        match pods_api.delete(name, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let message = format!("Deleted pod(s): {}", victims.join(", "));
    rc.ctx.event(rs, false, "SuccessfulDelete", message).await;
    rc.expectations.expect(
        &rs.uid().unwrap_or_default(),
        HashSet::new(),
        victims.into_iter().collect(),
    );
    Ok(())
}

/// Performs `plan` for `rs`.
async fn apply(rc: &RsCtx, rs: &ReplicaSet, plan: Plan) -> Result<Action, Error> {
    let pods_api: Api<Pod> =
        Api::namespaced(rc.ctx.client.clone(), &rs.namespace().unwrap_or_default());
    for (name, uid) in &plan.adopt {
        let patch =
            serde_json::json!({"metadata": {"ownerReferences": [controller_ref(rs)], "uid": uid}});
        let _ = pods_api
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await;
    }
    match plan.change {
        Change::None => {}
        Change::Create(n) => create_pods(rc, rs, n).await?,
        Change::Delete(victims) => delete_pods(rc, rs, victims).await?,
    }
    if let Some(status) = &plan.status {
        merge_status(&rc.ctx.client, rs, status).await?;
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

async fn reconcile(rs: Arc<ReplicaSet>, rc: Arc<RsCtx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let all: Vec<Arc<Pod>> = (rc.pods.state().into_iter())
        .filter(|p| p.namespace().as_deref() == Some(&ns))
        .collect();
    let pods: Vec<&Pod> = all.iter().map(|p| p.as_ref()).collect();
    let uid = rs.uid().unwrap_or_default();
    let settled =
        rs.metadata.deletion_timestamp.is_some() || rc.expectations.satisfied(&uid, &rc.pods, &ns);
    let plan = plan(&rs, &pods, settled, Timestamp::now());
    apply(&rc, &rs, plan).await
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    informers.pods.synced().await;
    let rc = Arc::new(RsCtx {
        ctx,
        pods: informers.pods.store(),
        expectations: Expectations::default(),
    });
    let replicasets = &informers.replicasets;
    Controller::for_shared_stream(replicasets.subscribe(), replicasets.store())
        .owns_shared_stream(informers.pods.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("replicaset: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            rc,
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged, now, typed};
    use serde_json::{Value, json};

    /// ReplicaSet `web` (uid r1) wanting `replicas` pods labelled app=web, plus `patch`.
    fn replicaset(replicas: i32, patch: Value) -> ReplicaSet {
        let base = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "r1", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        });
        typed(merged(base, patch))
    }

    /// Pod `name` of the ReplicaSet: on node n1, Running and Ready for an hour, created two hours
    /// ago, plus `patch`.
    fn pod(name: &str, patch: Value) -> Pod {
        let base = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"},
                         "creationTimestamp": ago(7200),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(3600)}]},
        });
        typed(merged(base, patch))
    }

    fn node(n: &str) -> Value {
        json!({"spec": {"nodeName": n}})
    }
    fn phase(p: &str) -> Value {
        json!({"status": {"phase": p}})
    }
    fn not_ready() -> Value {
        json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": ago(60)}]}})
    }
    fn ready_for(secs: i64) -> Value {
        json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(secs)}]}})
    }
    fn created(secs: i64) -> Value {
        json!({"metadata": {"creationTimestamp": ago(secs)}})
    }
    fn restarts(n: i32) -> Value {
        json!({"status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": n}]}})
    }
    fn cost(c: &str) -> Value {
        json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": c}}})
    }
    fn orphan() -> Value {
        json!({"metadata": {"ownerReferences": null}})
    }

    #[test]
    fn pod_count_changes() {
        let deleting = json!({"metadata": {"deletionTimestamp": ago(1)}});
        // (case, replicas, pods, settled, change)
        #[rustfmt::skip]
        let cases: Vec<(&str, i32, Vec<Pod>, bool, Change)> = vec![
            ("none yet: create all", 3, vec![], true, Change::Create(3)),
            ("one short", 3, vec![pod("a", json!({})), pod("b", json!({}))], true, Change::Create(1)),
            ("at most 500 in one reconcile", 600, vec![], true, Change::Create(500)),
            ("enough", 2, vec![pod("a", json!({})), pod("b", json!({}))], true, Change::None),
            ("finished pods are replaced", 2, vec![pod("a", json!({})), pod("b", phase("Succeeded")), pod("c", phase("Failed"))], true, Change::Create(1)),
            ("terminating pods are replaced", 1, vec![pod("a", deleting.clone())], true, Change::Create(1)),
            ("other owners' pods do not count", 1, vec![pod("a", json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other", "controller": true}]}}))], true, Change::Create(1)),
            ("orphans count only once adopted", 1, vec![pod("a", orphan())], true, Change::Create(1)),
            ("cache behind: wait", 3, vec![], false, Change::None),
            ("cache behind: no deletes either", 0, vec![pod("a", json!({}))], false, Change::None),
            ("scale to 0", 0, vec![pod("a", json!({})), pod("b", json!({}))], true, Change::Delete(vec!["a".into(), "b".into()])),
            ("negative replicas mean 0", -1, vec![pod("a", json!({}))], true, Change::Delete(vec!["a".into()])),
        ];
        let mut table = Table::default();
        for (case, replicas, pods, settled, want) in cases {
            let pods: Vec<&Pod> = pods.iter().collect();
            let got = plan(&replicaset(replicas, json!({})), &pods, settled, now());
            table.check(case, got.change, want);
        }
        table.done();
    }

    #[test]
    fn which_pods_go_first() {
        let two = |a: Value, b: Value| (pod("a", a), pod("b", b));
        // (case, pod a, pod b, the one deleted when scaling from 2 to 1); everything else equal.
        #[rustfmt::skip]
        let cases: Vec<(&str, (Pod, Pod), &str)> = vec![
            ("unassigned before assigned", two(node("n1"), json!({"spec": {"nodeName": null}})), "b"),
            ("pending before running", two(phase("Running"), merged(phase("Pending"), not_ready())), "b"),
            ("pending before unknown", two(phase("Unknown"), phase("Pending")), "b"),
            ("unknown before running", two(phase("Running"), phase("Unknown")), "b"),
            ("not ready before ready", two(json!({}), not_ready()), "b"),
            ("lower deletion cost first", two(cost("10"), cost("-5")), "b"),
            ("deletion cost before readiness time", two(merged(cost("1"), ready_for(10)), ready_for(100_000)), "b"),
            ("ready for a shorter time first", two(ready_for(100_000), ready_for(10)), "b"),
            ("readiness times in the same power of two: by uid", two(ready_for(3000), ready_for(3100)), "a"),
            ("more restarts first", two(restarts(1), restarts(4)), "b"),
            ("newer first", two(created(100_000), created(10)), "b"),
            ("same age bucket: by uid", two(created(7000), created(7100)), "a"),
            ("phase before readiness", two(not_ready(), merged(phase("Pending"), json!({}))), "b"),
            ("assignment before phase", two(merged(phase("Pending"), not_ready()), json!({"spec": {"nodeName": null}})), "b"),
        ];
        let mut table = Table::default();
        for (case, (a, b), want) in cases {
            for (first, second) in [(&a, &b), (&b, &a)] {
                let pods = vec![first, second];
                let got = plan(&replicaset(1, json!({})), &pods, true, now());
                table.check(case, got.change, Change::Delete(vec![want.into()]));
            }
        }
        table.done();
    }

    #[test]
    fn doubled_up_pods_go_first() {
        // b shares node n1 with c; a is alone on n2: of the ready, equal pods, b or c goes.
        let pods = [
            pod("a", node("n2")),
            pod("b", node("n1")),
            pod("c", node("n1")),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let got = plan(&replicaset(2, json!({})), &refs, true, now());
        let Change::Delete(victims) = got.change else {
            panic!("expected a delete, got {:?}", got.change);
        };
        assert_eq!(victims.len(), 1);
        assert_ne!(victims[0], "a");
    }

    #[test]
    fn adoption() {
        let other = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other", "controller": true}]}});
        // (case, pod, adopted)
        #[rustfmt::skip]
        let cases: Vec<(&str, Pod, bool)> = vec![
            ("matching orphan", pod("a", orphan()), true),
            ("orphan with other labels", pod("a", merged(orphan(), json!({"metadata": {"labels": {"app": "db"}}}))), false),
            ("terminating orphan", pod("a", merged(orphan(), json!({"metadata": {"deletionTimestamp": ago(1)}}))), false),
            ("owned by another controller", pod("a", other), false),
            ("already ours", pod("a", json!({})), false),
        ];
        let mut table = Table::default();
        for (case, p, want) in cases {
            let got = plan(&replicaset(1, json!({})), &[&p], true, now());
            let adopted = got.adopt == vec![("a".to_string(), Some("uid-a".to_string()))];
            table.check(case, adopted, want);
        }
        table.done();
    }

    #[test]
    fn status_and_requeue() {
        let min_ready = |s: i32| json!({"spec": {"minReadySeconds": s}});
        let half_second = Some(Duration::from_millis(500));
        // (case, ReplicaSet patch, pods, settled, (replicas, fully labelled, ready, available), requeue)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, bool, (i32, i32, i32, i32), Option<Duration>)> = vec![
            ("all ready and available", json!({}), vec![pod("a", json!({})), pod("b", json!({}))], true, (2, 2, 2, 2), None),
            ("not ready", json!({}), vec![pod("a", not_ready())], true, (1, 1, 0, 0), None),
            ("ready but not yet available: requeue after minReadySeconds",
                min_ready(30), vec![pod("a", ready_for(10)), pod("b", ready_for(3600))], false, (2, 2, 2, 1), Some(Duration::from_secs(30))),
            ("missing a template label", json!({"spec": {"template": {"metadata": {"labels": {"tier": "x"}}}}}),
                vec![pod("a", json!({}))], true, (1, 0, 1, 1), None),
            ("finished and terminating pods are not replicas", json!({}),
                vec![pod("a", phase("Failed")), pod("b", json!({"metadata": {"deletionTimestamp": ago(1)}}))], true, (0, 0, 0, 0), None),
            ("cache behind: requeue soon", json!({}), vec![pod("a", json!({}))], false, (1, 1, 1, 1), half_second),
        ];
        let mut table = Table::default();
        for (case, patch, pods, settled, counts, requeue) in cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let rs = replicaset(counts.0, patch);
            let got = plan(&rs, &refs, settled, now());
            let st = got.status.expect("a first status is written");
            let have = (
                st.replicas,
                st.fully_labeled_replicas.unwrap_or(0),
                st.ready_replicas.unwrap_or(0),
                st.available_replicas.unwrap_or(0),
            );
            table.check(case, (have, got.requeue), (counts, requeue));
        }
        table.done();
        // The same status again is not written.
        let pods = [pod("a", json!({}))];
        let refs: Vec<&Pod> = pods.iter().collect();
        let first = plan(&replicaset(1, json!({})), &refs, true, now()).status;
        let rs = replicaset(1, json!({"status": serde_json::to_value(first).unwrap()}));
        assert_eq!(plan(&rs, &refs, true, now()).status, None);
    }
}
