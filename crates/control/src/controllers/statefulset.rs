//! StatefulSet controller: pods `<name>-0..N-1` with stable hostnames, PVCs from
//! `volumeClaimTemplates` created before their pod, OrderedReady (one at a time, in order) or
//! Parallel management, scale-down from the highest ordinal, and rolling updates from the
//! highest ordinal down to `partition`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::daemonset::REVISION_HASH;
use super::deployment::template_hash;
use super::informers::Informers;
use super::util::{
    Context, controller_ref, controller_uid, ensure_revision, is_available, is_ready, is_terminal,
    merge_status,
};

struct StsCtx {
    ctx: Arc<Context>,
    pods: Store<Pod>,
}

fn ordinal(sts: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(sts)?.strip_prefix('-')?.parse().ok()
}

fn claim_name(template: &str, sts: &str, i: i32) -> String {
    format!("{template}-{sts}-{i}")
}

fn pod_for(sts: &StatefulSet, i: i32, hash: &str) -> Pod {
    let name = sts.name_any();
    let spec = sts.spec.clone().unwrap_or_default();
    let mut meta = spec.template.metadata.clone().unwrap_or_default();
    let pod_name = format!("{name}-{i}");
    meta.name = Some(pod_name.clone());
    meta.namespace = sts.namespace();
    meta.owner_references = Some(vec![controller_ref(sts)]);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        "statefulset.kubernetes.io/pod-name".into(),
        pod_name.clone(),
    );
    labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
    let mut pspec = spec.template.spec.clone().unwrap_or_default();
    pspec.hostname = Some(pod_name);
    pspec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = t.metadata.name.clone().unwrap_or_default();
        let volumes = pspec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != tname);
        if let Ok(v) = serde_json::from_value(
            serde_json::json!({"name": tname, "persistentVolumeClaim": {"claimName": claim_name(&tname, &name, i)}}),
        ) {
            volumes.push(v);
        }
    }
    Pod {
        metadata: meta,
        spec: Some(pspec),
        status: None,
    }
}

async fn ensure_claims(ctx: &Context, sts: &StatefulSet, i: i32) -> kube::Result<()> {
    let ns = sts.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let retention_delete = sts
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    for t in sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
    {
        let name = claim_name(
            &t.metadata.name.clone().unwrap_or_default(),
            &sts.name_any(),
            i,
        );
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut pvc = t.clone();
        pvc.metadata.name = Some(name);
        pvc.metadata.namespace = Some(ns.clone());
        pvc.status = None;
        let mut labels = sts
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        labels.extend(pvc.metadata.labels.take().unwrap_or_default());
        pvc.metadata.labels = Some(labels);
        if retention_delete {
            pvc.metadata.owner_references = Some(vec![controller_ref(sts)]);
        }
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {
                ctx.event(
                    sts,
                    false,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {} for StatefulSet {} success",
                        pvc.metadata.name.clone().unwrap_or_default(),
                        sts.name_any()
                    ),
                )
                .await
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One API action of a StatefulSet reconcile, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Create pod `i`, and first the claims of its volumeClaimTemplates.
    Create(i32),
    /// Delete pod `i`: finished (to be made again), beyond replicas, or of an old revision.
    Delete(i32),
    Status(Box<StatefulSetStatus>),
}

#[derive(Debug)]
struct Plan {
    /// The template hash (the update revision) to record as a ControllerRevision first; none
    /// for a StatefulSet being deleted.
    revision: Option<String>,
    steps: Vec<Step>,
    requeue: Option<Duration>,
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && is_ready(p)
}

/// Upstream's `isHealthy`: running, ready and not terminating.
fn is_healthy(p: &Pod) -> bool {
    running_and_ready(p) && !is_terminating(p)
}

/// What holds an ordered (OrderedReady) StatefulSet back.
enum Progress {
    Go,
    Wait,
}

/// The StatefulSet as one reconcile sees it.
struct View<'a> {
    replicas: i32,
    /// One at a time, in order (OrderedReady); Parallel is not.
    ordered: bool,
    min_ready: i32,
    hash: &'a str,
    pods: &'a HashMap<i32, &'a Pod>,
    now: Timestamp,
}

impl View<'_> {
    fn available(&self, p: &Pod) -> bool {
        running_and_ready(p) && is_available(p, self.min_ready, self.now)
    }

    /// Upstream's `processReplica` over 0..replicas: finished pods are deleted (made again
    /// next time), missing ones created; ordered sets stop at the first pod that is not yet
    /// running, ready and available.
    fn replicas(&self, steps: &mut Vec<Step>) -> Progress {
        for i in 0..self.replicas {
            let wait = match self.pods.get(&i) {
                Some(p) if is_terminal(p) => {
                    if !is_terminating(p) {
                        steps.push(Step::Delete(i));
                    }
                    true
                }
                None => {
                    steps.push(Step::Create(i));
                    true
                }
                Some(p) => is_terminating(p) || !self.available(p),
            };
            if wait && self.ordered {
                return Progress::Wait;
            }
        }
        Progress::Go
    }

    /// Upstream's `processCondemned`: pods beyond replicas go from the highest ordinal; an
    /// ordered set deletes one at a time, waits for terminating ones, and deletes an unhealthy
    /// pod only if it is the first unhealthy one.
    fn condemned(&self, steps: &mut Vec<Step>) -> Progress {
        let mut condemned: Vec<i32> = self
            .pods
            .keys()
            .copied()
            .filter(|i| *i >= self.replicas)
            .collect();
        condemned.sort_unstable_by(|a, b| b.cmp(a));
        let first_unhealthy = (0..self.replicas)
            .find(|i| !self.pods.get(i).is_some_and(|p| is_healthy(p)))
            .or_else(|| {
                condemned
                    .iter()
                    .rev()
                    .copied()
                    .find(|i| !is_healthy(self.pods[i]))
            });
        for i in condemned {
            let p = self.pods[&i];
            if is_terminating(p) {
                if self.ordered {
                    return Progress::Wait;
                }
                continue;
            }
            if self.ordered && !self.available(p) && first_unhealthy != Some(i) {
                return Progress::Wait;
            }
            steps.push(Step::Delete(i));
            if self.ordered {
                return Progress::Wait;
            }
        }
        Progress::Go
    }

    /// Upstream's RollingUpdate: the highest pod from `partition` up that is not of the new
    /// revision is deleted (to be made again), waiting at any unhealthy pod above it.
    fn update(&self, partition: i32, steps: &mut Vec<Step>) {
        for i in (partition.max(0)..self.replicas).rev() {
            let Some(p) = self.pods.get(&i) else {
                return; // being created: not healthy yet
            };
            if p.labels().get(REVISION_HASH).map(String::as_str) != Some(self.hash)
                && !is_terminating(p)
            {
                steps.push(Step::Delete(i));
                return;
            }
            if !is_healthy(p) {
                return;
            }
        }
    }
}

/// Decides one reconcile of `sts` from its pods (`owned`) at `now`.
fn plan(sts: &StatefulSet, owned: &[&Pod], now: Timestamp) -> Plan {
    let spec = sts.spec.clone().unwrap_or_default();
    let hash = template_hash(
        &spec.template,
        sts.status.as_ref().and_then(|s| s.collision_count),
    );
    if sts.metadata.deletion_timestamp.is_some() {
        return Plan {
            revision: None,
            steps: Vec::new(),
            requeue: None,
        };
    }
    let name = sts.name_any();
    let pods: HashMap<i32, &Pod> = owned
        .iter()
        .filter_map(|p| ordinal(&name, &p.name_any()).map(|i| (i, *p)))
        .collect();
    let view = View {
        replicas: spec.replicas.unwrap_or(1).max(0),
        ordered: spec.pod_management_policy.as_deref() != Some("Parallel"),
        min_ready: spec.min_ready_seconds.unwrap_or(0),
        hash: &hash,
        pods: &pods,
        now,
    };
    let mut steps = Vec::new();
    // Each stage runs only once the one before lets an ordered set go on (upstream).
    if let Progress::Go = view.replicas(&mut steps)
        && let Progress::Go = view.condemned(&mut steps)
    {
        let strategy = spec.update_strategy.as_ref();
        if strategy.is_none_or(|u| u.type_.as_deref() != Some("OnDelete")) {
            let partition = (strategy.and_then(|u| u.rolling_update.as_ref()))
                .and_then(|r| r.partition)
                .unwrap_or(0);
            view.update(partition, &mut steps);
        }
    }
    let status = status(sts, &view);
    let all_healthy = (0..view.replicas).all(|i| {
        pods.get(&i)
            .is_some_and(|p| is_ready(p) && !is_terminating(p))
    });
    let settled = all_healthy && status.replicas == view.replicas;
    if sts.status.as_ref() != Some(&status) {
        steps.push(Step::Status(Box::new(status)));
    }
    Plan {
        revision: Some(hash),
        steps,
        requeue: Some(Duration::from_secs(if settled { 30 } else { 2 })),
    }
}

fn status(sts: &StatefulSet, view: &View) -> StatefulSetStatus {
    let name = sts.name_any();
    let hash = view.hash.to_string();
    let live: Vec<&Pod> = (view.pods.iter())
        .filter(|(i, p)| **i < view.replicas && !is_terminating(p))
        .map(|(_, p)| *p)
        .collect();
    let of_revision = |rev: &String| {
        live.iter()
            .filter(|p| p.labels().get(REVISION_HASH) == Some(rev))
            .count() as i32
    };
    let updated = of_revision(&hash);
    let current_revision = if updated == view.replicas {
        hash.clone()
    } else {
        // Written as `<name>-<hash>`; pods carry the bare hash.
        (sts.status.as_ref())
            .and_then(|s| s.current_revision.as_deref())
            .map(|r| r.strip_prefix(&format!("{name}-")).unwrap_or(r).to_string())
            .unwrap_or_else(|| hash.clone())
    };
    StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(
            live.iter()
                .filter(|p| is_available(p, view.min_ready, view.now))
                .count() as i32,
        ),
        current_replicas: Some(of_revision(&current_revision)),
        updated_replicas: Some(updated),
        current_revision: Some(format!("{name}-{current_revision}")),
        update_revision: Some(format!("{name}-{hash}")),
        observed_generation: sts.metadata.generation,
        collision_count: sts.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    }
}

/// Performs `plan` for `sts`.
async fn apply(ctx: &Context, sts: &StatefulSet, plan: Plan) -> Result<Action, kube::Error> {
    let Some(hash) = plan.revision else {
        return Ok(Action::await_change());
    };
    let template = sts.spec.clone().unwrap_or_default().template;
    ensure_revision(ctx, sts, &template, &hash).await?;
    let name = sts.name_any();
    let pods_api: Api<Pod> =
        Api::namespaced(ctx.client.clone(), &sts.namespace().unwrap_or_default());
    for step in plan.steps {
        match step {
            Step::Create(i) => {
                // Decided here, not in the plan: which claims exist is read from the API.
                ensure_claims(ctx, sts, i).await?;
                match pods_api
                    .create(&PostParams::default(), &pod_for(sts, i, &hash))
                    .await
                {
                    Ok(_) => {
                        let message =
                            format!("create Pod {name}-{i} in StatefulSet {name} successful");
                        ctx.event(sts, false, "SuccessfulCreate", message).await
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            Step::Delete(i) => {
                if pods_api
                    .delete(&format!("{name}-{i}"), &DeleteParams::default())
                    .await
                    .is_ok()
                {
                    let message = format!("delete Pod {name}-{i} in StatefulSet {name} successful");
                    ctx.event(sts, false, "SuccessfulDelete", message).await;
                }
            }
            Step::Status(status) => merge_status(&ctx.client, sts, &status).await?,
        }
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

async fn reconcile(sts: Arc<StatefulSet>, sc: Arc<StsCtx>) -> Result<Action, kube::Error> {
    let (ns, uid) = (sts.namespace(), sts.uid());
    let pods: Vec<Arc<Pod>> = (sc.pods.state().into_iter())
        .filter(|p| p.namespace() == ns && controller_uid(&p.metadata) == uid.as_deref())
        .collect();
    let owned: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let plan = plan(&sts, &owned, Timestamp::now());
    apply(&sc.ctx, &sts, plan).await
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let client = ctx.client.clone();
    informers.pods.synced().await;
    let sc = Arc::new(StsCtx {
        ctx,
        pods: informers.pods.store(),
    });
    Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .owns_shared_stream(informers.pods.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("statefulset: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            sc,
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

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "v2"}]}})
    }

    /// StatefulSet `db` (uid s1) of 3 replicas, OrderedReady, plus `patch`.
    fn statefulset(patch: Value) -> StatefulSet {
        let base = json!({
            "metadata": {"name": "db", "namespace": "default", "uid": "s1"},
            "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template()},
        });
        typed(merged(base, patch))
    }

    fn current_hash() -> String {
        template_hash(&typed(template()), None)
    }

    /// Pod db-`i` of the current revision, Running and Ready for an hour, plus `patch`.
    fn pod(i: i32, patch: Value) -> Pod {
        let base = json!({
            "metadata": {"name": format!("db-{i}"), "namespace": "default", "labels": {REVISION_HASH: current_hash()}},
            "spec": {"containers": [{"name": "c", "image": "v2"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(3600)}]},
        });
        typed(merged(base, patch))
    }

    fn ready(i: i32) -> Pod {
        pod(i, json!({}))
    }
    fn pending(i: i32) -> Pod {
        pod(
            i,
            json!({"status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}}),
        )
    }
    fn terminating(i: i32) -> Pod {
        pod(i, json!({"metadata": {"deletionTimestamp": ago(1)}}))
    }
    fn failed(i: i32) -> Pod {
        pod(i, json!({"status": {"phase": "Failed"}}))
    }
    /// Ready, but of an older template.
    fn old(i: i32) -> Pod {
        pod(i, json!({"metadata": {"labels": {REVISION_HASH: "old"}}}))
    }
    fn old_pending(i: i32) -> Pod {
        merged_pod(
            pending(i),
            json!({"metadata": {"labels": {REVISION_HASH: "old"}}}),
        )
    }
    fn merged_pod(p: Pod, patch: Value) -> Pod {
        typed(merged(serde_json::to_value(p).unwrap(), patch))
    }

    fn actions(plan: &Plan) -> Vec<String> {
        (plan.steps.iter())
            .filter_map(|s| match s {
                Step::Create(i) => Some(format!("create {i}")),
                Step::Delete(i) => Some(format!("delete {i}")),
                Step::Status(_) => None,
            })
            .collect()
    }

    #[test]
    fn pod_actions() {
        let parallel = json!({"spec": {"podManagementPolicy": "Parallel"}});
        let replicas = |n: i32| json!({"spec": {"replicas": n}});
        let partition = |n: i32| json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": n}}}});
        let both = |a: Value, b: Value| merged(a, b);
        // (case, StatefulSet patch, pods, actions)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, Vec<&str>)> = vec![
            ("ordered: pod 0 first", json!({}), vec![], vec!["create 0"]),
            ("ordered: 1 waits for 0 to be ready", json!({}), vec![pending(0)], vec![]),
            ("ordered: then 1", json!({}), vec![ready(0)], vec!["create 1"]),
            ("ordered: a gap is filled in order", json!({}), vec![ready(0), ready(2)], vec!["create 1"]),
            ("all there: nothing", json!({}), vec![ready(0), ready(1), ready(2)], vec![]),
            ("ordered: a failed pod is deleted to be made again, and holds the rest",
                json!({}), vec![ready(0), failed(1)], vec!["delete 1"]),
            ("a succeeded pod too", json!({}), vec![pod(0, json!({"status": {"phase": "Succeeded"}})), ready(1), ready(2)], vec!["delete 0"]),
            ("ordered: a terminating pod holds the rest", json!({}), vec![terminating(0)], vec![]),
            // Upstream also waits for minReadySeconds (isRunningAndAvailable); kinglet did not.
            ("ordered: waits for minReadySeconds",
                json!({"spec": {"minReadySeconds": 60}}), vec![pod(0, json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(10)}]}}))], vec![]),
            ("ordered: scale down from the highest, one at a time",
                replicas(1), vec![ready(0), ready(1), ready(2)], vec!["delete 2"]),
            ("ordered: scale down waits for a terminating pod",
                replicas(1), vec![ready(0), ready(1), terminating(2)], vec![]),
            // Upstream scales down only once every remaining replica is ready; kinglet deleted anyway.
            ("ordered: scale down waits for the replicas to be ready",
                replicas(1), vec![pending(0), ready(1)], vec![]),
            ("ordered: an unhealthy pod being scaled away goes if it is the first unhealthy one",
                replicas(1), vec![ready(0), pending(1)], vec!["delete 1"]),
            ("ordered: an unhealthy pod above another unhealthy one waits",
                replicas(1), vec![ready(0), pending(1), pending(2)], vec![]),
            ("scale to 0", replicas(0), vec![ready(0), ready(1)], vec!["delete 1"]),
            ("rolling update: the highest old pod first", json!({}), vec![old(0), old(1), old(2)], vec!["delete 2"]),
            ("rolling update: then the next", json!({}), vec![old(0), old(1), ready(2)], vec!["delete 1"]),
            ("rolling update: waits for the new pod to be ready", json!({}), vec![old(0), old(1), pending(2)], vec![]),
            ("rolling update: waits while the old pod terminates", json!({}), vec![old(0), old(1), merged_pod(old(2), json!({"metadata": {"deletionTimestamp": ago(1)}}))], vec![]),
            ("partition 2: only pod 2 updates", partition(2), vec![old(0), old(1), old(2)], vec!["delete 2"]),
            ("partition 2: pods below stay old", partition(2), vec![old(0), old(1), ready(2)], vec![]),
            ("partition above replicas: nothing updates", partition(5), vec![old(0), old(1), old(2)], vec![]),
            ("OnDelete: no update", json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}), vec![old(0), old(1), old(2)], vec![]),
            ("scaling before updating", replicas(2), vec![old(0), old(1), old(2)], vec!["delete 2"]),
            ("parallel: every missing pod at once", parallel.clone(), vec![], vec!["create 0", "create 1", "create 2"]),
            ("parallel: no waiting for readiness", parallel.clone(), vec![pending(0)], vec!["create 1", "create 2"]),
            ("parallel: failed pods replaced alongside", parallel.clone(), vec![failed(0), ready(1)], vec!["delete 0", "create 2"]),
            ("parallel: scale down all at once, highest first", both(parallel.clone(), replicas(1)), vec![ready(0), pending(1), ready(2), terminating(3)], vec!["delete 2", "delete 1"]),
            ("parallel: update one at a time from the top", parallel.clone(), vec![old(0), old(1), old(2)], vec!["delete 2"]),
            ("parallel: update waits at an unhealthy new pod", parallel.clone(), vec![old(0), old(1), pending(2)], vec![]),
            ("parallel: an unhealthy old pod is updated", parallel.clone(), vec![old(0), ready(1), old_pending(2)], vec!["delete 2"]),
            ("parallel: update waits while a pod is created", parallel, vec![old(0), old(1)], vec!["create 2"]),
            ("being deleted: nothing", json!({"metadata": {"deletionTimestamp": ago(1)}}), vec![], vec![]),
        ];
        let mut table = Table::default();
        for (case, patch, pods, want) in cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let got = plan(&statefulset(patch), &refs, now());
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, actions(&got), want);
        }
        table.done();
    }

    #[test]
    fn status_and_requeue() {
        let hash = current_hash();
        // (case, StatefulSet patch, pods, (replicas, ready, current, updated, current revision), requeue)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, (i32, i32, i32, i32, String), u64)> = vec![
            ("all current and ready", json!({}), vec![ready(0), ready(1), ready(2)], (3, 3, 3, 3, hash.clone()), 30),
            // Kinglet read its own "db-old" back as a hash: "db-db-old", and 0 current pods.
            ("mid-update keeps the previous current revision",
                json!({"status": {"replicas": 3, "currentRevision": "db-old"}}), vec![old(0), old(1), ready(2)], (3, 3, 2, 1, "old".into()), 30),
            ("not all there yet", json!({}), vec![ready(0), pending(1)], (2, 1, 2, 2, hash.clone()), 2),
            ("terminating and condemned pods are not replicas", json!({"spec": {"replicas": 1}}), vec![ready(0), ready(1), terminating(2)], (1, 1, 1, 1, hash.clone()), 30),
        ];
        let mut table = Table::default();
        for (case, patch, pods, want, requeue) in cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let got = plan(&statefulset(patch), &refs, now());
            let st = got.steps.iter().find_map(|s| match s {
                Step::Status(st) => Some(st.clone()),
                _ => None,
            });
            let have = st.map(|s| {
                let rev = s.current_revision.unwrap_or_default();
                (
                    s.replicas,
                    s.ready_replicas.unwrap_or(0),
                    s.current_replicas.unwrap_or(0),
                    s.updated_replicas.unwrap_or(0),
                    rev.trim_start_matches("db-").to_string(),
                )
            });
            table.check(
                case,
                (have, got.requeue),
                (Some(want), Some(Duration::from_secs(requeue))),
            );
        }
        table.done();
    }
}
