//! HorizontalPodAutoscaler (autoscaling/v2) on CPU and memory utilisation, read from the
//! `metrics.k8s.io` API (served once the kubelet reports metrics). Desired replicas follow
//! upstream's `GetResourceReplicas`: `ceil(ready pods * utilisation / target)` with a 10%
//! tolerance (missing and unready pods assumed idle on the way up, missing ones busy on the way
//! down), stabilised over `behavior`'s windows (5 minutes down by default), bounded by min/max.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::util::{Context, merge_status};
use crate::scheduler::resources::parse_milli;

const TOLERANCE: f64 = 0.1;
const DOWNSCALE_WINDOW_SECS: i64 = 300;
const SYNC: Duration = Duration::from_secs(15);

struct HpaCtx {
    ctx: Arc<Context>,
    /// Recent recommendations per HPA (time, replicas), for the scale-down window.
    history: Mutex<HashMap<String, VecDeque<(i64, i32)>>>,
}

/// Upstream's CPU initialisation period and initial readiness delay: how long after its start
/// a pod's CPU sample may be skewed by start-up.
const CPU_INITIALIZATION_SECS: i64 = 300;
const INITIAL_READINESS_DELAY_SECS: i64 = 30;

/// A condition, keeping `prev`'s transition time while its status stays (upstream's
/// `setConditionInList`).
fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    prev: &[Value],
    now: Timestamp,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = (prev.iter())
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
        .unwrap_or_else(|| now.to_string());
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
}

/// A pod's sample in the metrics API: usage in milli-units, taken at `end` over `window`.
struct Sample {
    usage: i128,
    end: Option<Timestamp>,
    window: i64,
}

/// Seconds of a Go duration such as "10s", "1m30s" or "500ms" (0 if it is none).
fn go_duration_secs(d: &str) -> i64 {
    let (mut total, mut number) = (0.0, String::new());
    let mut chars = d.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().unwrap_or(0.0);
        number.clear();
        total += match c {
            'h' => n * 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n / 1000.0
            }
            'm' => n * 60.0,
            's' => n,
            _ => 0.0,
        };
    }
    total as i64
}

/// The samples of `resource` per pod name in a PodMetricsList.
fn samples(metrics: &Value, resource: &str) -> BTreeMap<String, Sample> {
    (metrics["items"].as_array().into_iter().flatten())
        .map(|m| {
            let usage = (m["containers"].as_array().into_iter().flatten())
                .filter_map(|c| c["usage"][resource].as_str().and_then(parse_milli))
                .sum();
            let sample = Sample {
                usage,
                end: m["timestamp"].as_str().and_then(|t| t.parse().ok()),
                window: go_duration_secs(m["window"].as_str().unwrap_or("")),
            };
            (
                m["metadata"]["name"].as_str().unwrap_or("").to_string(),
                sample,
            )
        })
        .collect()
}

/// Upstream's `calculateRequests`: each pod's request of `resource` over its containers and
/// sidecars, every one of which must request it.
fn requests(pods: &[Pod], resource: &str) -> Result<BTreeMap<String, i128>, String> {
    let mut out = BTreeMap::new();
    for p in pods {
        let spec = p.spec.clone().unwrap_or_default();
        let sidecars = (spec.init_containers.iter().flatten())
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut sum = 0;
        for c in spec.containers.iter().chain(sidecars) {
            let request = (c.resources.as_ref())
                .and_then(|r| r.requests.as_ref()?.get(resource))
                .and_then(|q| parse_milli(&q.0));
            let Some(r) = request else {
                return Err(format!(
                    "missing request for {resource} in container {} of Pod {}",
                    c.name,
                    p.name_any()
                ));
            };
            sum += r;
        }
        out.insert(p.name_any(), sum);
    }
    Ok(out)
}

/// Upstream's `groupPods`: pods that count, and the unready, missing and ignored ones.
#[derive(Default)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether a pod's CPU sample is skewed by its start: not ready yet, or (early on) taken before
/// it became ready.
fn cpu_unready(p: &Pod, sample: &Sample, now: Timestamp) -> bool {
    let status = p.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    let (Some(ready), Some(start)) = (ready, status.start_time.as_ref()) else {
        return true;
    };
    let start = start.0.as_second();
    let changed = ready
        .last_transition_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    if start + CPU_INITIALIZATION_SECS > now.as_second() {
        let sampled = sample.end.map(|t| t.as_second()).unwrap_or(0);
        ready.status == "False" || sampled < changed + sample.window
    } else {
        ready.status == "False" && start + INITIAL_READINESS_DELAY_SECS > changed
    }
}

fn group(
    pods: &[Pod],
    samples: &BTreeMap<String, Sample>,
    resource: &str,
    now: Timestamp,
) -> Groups {
    let mut g = Groups::default();
    for p in pods {
        let name = p.name_any();
        if p.metadata.deletion_timestamp.is_some() || phase(p) == "Failed" {
            g.ignored.insert(name);
        } else if phase(p) == "Pending" {
            g.unready.insert(name);
        } else if let Some(sample) = samples.get(&name) {
            if resource == "cpu" && cpu_unready(p, sample, now) {
                g.unready.insert(name);
            } else {
                g.ready += 1;
            }
        } else {
            g.missing.insert(name);
        }
    }
    g
}

/// Utilisation in whole percent of the requests (upstream truncates), over the pods in `usage`.
fn utilisation(
    usage: &BTreeMap<String, i128>,
    requests: &BTreeMap<String, i128>,
) -> Result<i64, String> {
    let (mut used, mut requested) = (0, 0);
    for (name, u) in usage {
        used += u;
        requested += requests
            .get(name)
            .copied()
            .ok_or(format!("missing request for pod {name}"))?;
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    Ok((used * 100 / requested) as i64)
}

/// Upstream's `GetResourceReplicas`: replicas for `target` percent utilisation of `resource`
/// from ready pods; missing or unready pods are assumed idle when scaling up, and missing ones
/// fully used when scaling down, and any change of direction they cause means no change.
/// Returns the replicas and the utilisation.
fn resource_replicas(
    current: i32,
    target: i32,
    resource: &str,
    pods: &[Pod],
    metrics: &Value,
    now: Timestamp,
) -> Result<(i32, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let samples = samples(metrics, resource);
    let g = group(pods, &samples, resource, now);
    let requests = requests(pods, resource)?;
    let mut usage: BTreeMap<String, i128> = (samples.iter())
        .filter(|(n, _)| {
            !g.ignored.contains(*n) && !g.unready.contains(*n) && requests.contains_key(*n)
        })
        .map(|(n, s)| (n.clone(), s.usage))
        .collect();
    if usage.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let target = target.max(1);
    let util = utilisation(&usage, &requests)?;
    let ratio = util as f64 / f64::from(target);
    let within = |r: f64| (r - 1.0).abs() <= TOLERANCE;
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        let n = if within(ratio) {
            current
        } else {
            (ratio * g.ready as f64).ceil() as i32
        };
        return Ok((n, util));
    }
    for name in &g.missing {
        let assumed = if ratio < 1.0 {
            requests[name] * i128::from(target.max(100)) / 100
        } else {
            0
        };
        usage.insert(name.clone(), assumed);
    }
    if scale_up_with_unready {
        for name in &g.unready {
            usage.insert(name.clone(), 0);
        }
    }
    let new_ratio = utilisation(&usage, &requests)? as f64 / f64::from(target);
    if within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok((current, util));
    }
    let n = (new_ratio * usage.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return Ok((current, util));
    }
    Ok((n, util))
}

/// What the reconcile observed: the target's scale, and (when it has replicas) the pods its
/// selector picks with their metrics.
struct Observed {
    scale: Result<(i32, String), String>,
    readings: Option<Result<(Vec<Pod>, Value), String>>,
}

#[derive(Debug, Default)]
struct Plan {
    /// (warning, reason, message), recorded first.
    events: Vec<(bool, String, String)>,
    /// The recommendations of the stabilisation windows, this one included.
    history: Option<VecDeque<(i64, i32)>>,
    /// The new replicas of the target.
    rescale: Option<(i32, i32)>,
    status: Option<Value>,
}

/// The stabilisation windows (up, down) in seconds: spec.behavior, else 0 and 300.
fn windows(hpa: &HorizontalPodAutoscaler) -> (i64, i64) {
    let behavior = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
    let window = |r: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>, default| {
        r.and_then(|r| r.stabilization_window_seconds)
            .map(i64::from)
            .unwrap_or(default)
    };
    (
        window(behavior.and_then(|b| b.scale_up.as_ref()), 0),
        window(
            behavior.and_then(|b| b.scale_down.as_ref()),
            DOWNSCALE_WINDOW_SECS,
        ),
    )
}

/// Upstream's `stabilizeRecommendationWithBehaviors`: `current` moved into the range between the
/// lowest recommendation of the scale-up window and the highest of the scale-down window.
fn stabilize(
    current: i32,
    desired: i32,
    history: &VecDeque<(i64, i32)>,
    (up, down): (i64, i64),
    now: i64,
) -> i32 {
    let (mut low, mut high) = (desired, desired);
    for (t, r) in history {
        if *t > now - up {
            low = low.min(*r);
        }
        if *t > now - down {
            high = high.max(*r);
        }
    }
    current.max(low).min(high)
}

/// The recommendations to keep: those of the last `window` seconds, and `latest`.
fn remember(
    history: &VecDeque<(i64, i32)>,
    latest: (i64, i32),
    window: i64,
) -> VecDeque<(i64, i32)> {
    let mut kept: VecDeque<(i64, i32)> = (history.iter().copied())
        .filter(|(t, _)| *t >= latest.0 - window)
        .collect();
    kept.push_back(latest);
    kept
}

/// The ScalingLimited condition (status, reason, message) when min/max turned `wanted` into
/// `bounded`.
fn limit(bounded: i32, wanted: i32) -> (bool, &'static str, &'static str) {
    match bounded.cmp(&wanted) {
        std::cmp::Ordering::Greater => (
            true,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        ),
        std::cmp::Ordering::Less => (
            true,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        ),
        std::cmp::Ordering::Equal => (
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        ),
    }
}

/// The replicas the metrics ask for, the metrics' status, and the ScalingActive condition;
/// failures give events.
fn from_metrics(
    hpa: &HorizontalPodAutoscaler,
    current: i32,
    readings: &Result<(Vec<Pod>, Value), String>,
    now: Timestamp,
    events: &mut Vec<(bool, String, String)>,
) -> (Option<i32>, Vec<Value>, (bool, &'static str, String)) {
    let mut proposals = Vec::new();
    let mut failures = Vec::new();
    let mut current_metrics = Vec::new();
    let specs = (hpa.spec.iter())
        .flat_map(|s| s.metrics.iter().flatten())
        .filter(|m| m.type_ == "Resource");
    for res in specs.filter_map(|m| m.resource.as_ref()) {
        let Some(want) = res.target.average_utilization else {
            continue;
        };
        let name = &res.name;
        let result = match readings {
            Err(e) => Err(format!("unable to get metrics for resource {name}: {e}")),
            Ok((pods, metrics)) => resource_replicas(current, want, name, pods, metrics, now),
        };
        match result {
            Ok((n, util)) => {
                proposals.push(n);
                current_metrics.push(json!({"type": "Resource", "resource": {"name": name, "current": {"averageUtilization": util}}}));
            }
            Err(e) => {
                let message = format!("failed to get {name} utilization: {e}");
                events.push((true, "FailedGetResourceMetric".into(), message.clone()));
                failures.push(message);
            }
        }
    }
    let best = proposals.iter().max().copied();
    // Upstream's computeReplicasForMetrics: with a metric failing, no scaling down.
    match (best, failures.first()) {
        (Some(n), None) => (Some(n), current_metrics, (true, "ValidMetricFound", "the HPA was able to successfully calculate a replica count from resource utilization".into())),
        (Some(n), Some(_)) if n >= current => (Some(n), current_metrics, (true, "ValidMetricFound", "the HPA was able to successfully calculate a replica count from resource utilization".into())),
        (_, Some(e)) => (None, current_metrics, (false, "FailedGetResourceMetric", e.clone())),
        (None, None) => (None, current_metrics, (false, "InvalidMetricSourceType", "no supported metric is configured".into())),
    }
}

/// Decides one reconcile of `hpa` from what it observed, the recommendations of its windows
/// (`history`) and the time.
fn plan(
    hpa: &HorizontalPodAutoscaler,
    observed: &Observed,
    history: &VecDeque<(i64, i32)>,
    now: Timestamp,
) -> Plan {
    let (current, _) = match &observed.scale {
        Ok(s) => s.clone(),
        Err(e) => {
            return Plan {
                events: vec![(true, "FailedGetScale".into(), e.clone())],
                ..Plan::default()
            };
        }
    };
    let spec = hpa.spec.clone().unwrap_or_default();
    let prev: Vec<Value> =
        serde_json::to_value(hpa.status.as_ref().and_then(|s| s.conditions.clone()))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
    let c = |type_: &str, ok: bool, reason: &str, message: &str| {
        cond(type_, ok, reason, message, &prev, now)
    };
    let mut plan = Plan::default();
    let mut conditions = vec![c(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    )];
    let (mut desired, mut current_metrics) = (current, Vec::new());
    if current == 0 {
        conditions.push(c(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        ));
    } else {
        let readings = observed
            .readings
            .clone()
            .unwrap_or_else(|| Err("no metrics read".into()));
        let (proposal, metrics, (ok, reason, message)) =
            from_metrics(hpa, current, &readings, now, &mut plan.events);
        desired = proposal.unwrap_or(current);
        current_metrics = metrics;
        conditions.push(c("ScalingActive", ok, reason, &message));
    }
    let now_s = now.as_second();
    let windows = windows(hpa);
    let stabilized = stabilize(current, desired, history, windows, now_s);
    plan.history = Some(remember(
        history,
        (now_s, desired),
        windows.0.max(windows.1),
    ));
    let (min, max) = (spec.min_replicas.unwrap_or(1), spec.max_replicas);
    let bounded = stabilized.clamp(min, max.max(min));
    let (limited, reason, message) = limit(bounded, stabilized);
    conditions.push(c("ScalingLimited", limited, reason, message));
    let desired = if current == 0 { 0 } else { bounded };
    let mut last_scale = hpa
        .status
        .as_ref()
        .and_then(|s| s.last_scale_time.clone())
        .map(|t| t.0.to_string());
    if desired != current {
        plan.rescale = Some((current, desired));
        last_scale = Some(now.to_string());
    }
    plan.status = Some(
        json!({"currentReplicas": current, "desiredReplicas": desired, "currentMetrics": current_metrics,
        "lastScaleTime": last_scale, "observedGeneration": hpa.metadata.generation, "conditions": conditions}),
    );
    plan
}

/// The path of the target's scale subresource.
fn scale_path(hpa: &HorizontalPodAutoscaler) -> String {
    let spec = hpa.spec.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let group = target.api_version.as_deref().unwrap_or("apps/v1");
    let plural = format!("{}s", target.kind.to_lowercase());
    let ns = hpa.namespace().unwrap_or_default();
    format!(
        "/apis/{group}/namespaces/{ns}/{plural}/{}/scale",
        target.name
    )
}

/// The target's replicas and pod selector.
async fn read_scale(client: &kube::Client, path: &str) -> Result<(i32, String), String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let scale: Value = client.request(req).await.map_err(|e| e.to_string())?;
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
    Ok((
        current,
        scale["status"]["selector"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    ))
}

/// The pods `selector` picks in `ns` and their metrics.
async fn read_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<(Vec<Pod>, Value), String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| e.to_string())?
        .items;
    let req = http::Request::get(format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}",
        selector.replace('=', "%3D").replace(',', "%2C")
    ))
    .body(Vec::new())
    .map_err(|e| e.to_string())?;
    let metrics: Value = client
        .request(req)
        .await
        .map_err(|e| format!("no metrics returned from resource metrics API ({e})"))?;
    Ok((pods, metrics))
}

async fn reconcile(
    hpa: Arc<HorizontalPodAutoscaler>,
    hc: Arc<HpaCtx>,
) -> Result<Action, kube::Error> {
    let ctx = &hc.ctx;
    let ns = hpa.namespace().unwrap_or_default();
    let path = scale_path(&hpa);
    let scale = read_scale(&ctx.client, &path).await;
    let readings = match &scale {
        Ok((current, selector)) if *current != 0 => {
            Some(read_metrics(&ctx.client, &ns, selector).await)
        }
        _ => None,
    };
    let key = format!("{ns}/{}", hpa.name_any());
    let history = (hc
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned())
    .unwrap_or_default();
    let plan = plan(
        &hpa,
        &Observed { scale, readings },
        &history,
        Timestamp::now(),
    );
    // Apply.
    for (warning, reason, message) in plan.events {
        ctx.event(hpa.as_ref(), warning, &reason, message).await;
    }
    if let Some(h) = plan.history {
        hc.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, h);
    }
    if let Some((current, desired)) = plan.rescale {
        let patch = serde_json::to_vec(&json!({"spec": {"replicas": desired}})).unwrap_or_default();
        let req = http::Request::patch(&path)
            .header("Content-Type", "application/merge-patch+json")
            .body(patch)
            .map_err(kube::Error::HttpError)?;
        ctx.client.request_text(req).await?;
        let reason = if desired > current { "above" } else { "below" };
        let message = format!("New size: {desired}; reason: All metrics {reason} target");
        ctx.event(hpa.as_ref(), false, "SuccessfulRescale", message)
            .await;
    }
    if let Some(status) = plan.status {
        merge_status(&ctx.client, hpa.as_ref(), &status).await?;
    }
    Ok(Action::requeue(SYNC))
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let hc = Arc::new(HpaCtx {
        ctx,
        history: Mutex::new(HashMap::new()),
    });
    Controller::new(
        Api::<HorizontalPodAutoscaler>::all(client),
        watcher::Config::default(),
    )
    .run(
        reconcile,
        |_, e, _| {
            tracing::debug!("hpa: {e}");
            Action::requeue(SYNC)
        },
        hc,
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged, now, typed};

    /// Pod `name` requesting 100m CPU and 100Mi, Running and Ready for an hour, plus `patch`.
    fn pod(name: &str, patch: Value) -> Pod {
        let base = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]},
            "status": {"phase": "Running", "startTime": ago(3600),
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(3600)}]},
        });
        typed(merged(base, patch))
    }

    /// Pod `name` requesting a whole CPU.
    fn one_cpu(name: &str) -> Pod {
        pod(
            name,
            json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]}}),
        )
    }

    fn pods(n: usize) -> Vec<Pod> {
        (0..n).map(|i| pod(&format!("p{i}"), json!({}))).collect()
    }

    /// A PodMetricsList: (pod, CPU usage) sampled 5 s ago over 10 s.
    fn metrics(usage: &[(&str, &str)]) -> Value {
        let items: Vec<Value> = usage
            .iter()
            .map(|(name, cpu)| json!({"metadata": {"name": name}, "timestamp": ago(5), "window": "10s",
                                      "containers": [{"name": "c", "usage": {"cpu": cpu, "memory": "50Mi"}}]}))
            .collect();
        json!({"items": items})
    }

    /// Every pod of `pods` using `cpu`.
    fn all_use(pods: &[Pod], cpu: &str) -> Value {
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        metrics(&names.iter().map(|n| (n.as_str(), cpu)).collect::<Vec<_>>())
    }

    #[test]
    fn replicas_from_utilisation() {
        let pending = json!({"status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}});
        let two_plus = |extra: Pod| vec![pod("p0", json!({})), pod("p1", json!({})), extra];
        let sidecar = json!({"spec": {"initContainers": [{"name": "s", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}]}});
        // (case, current replicas, target %, resource, pods, metrics, replicas and utilisation, or the error's start)
        #[rustfmt::skip]
        let cases: Vec<(&str, i32, i32, &str, Vec<Pod>, Value, Result<(i32, i64), &str>)> = vec![
            ("at the target", 2, 50, "cpu", pods(2), all_use(&pods(2), "50m"), Ok((2, 50))),
            ("within the 10% tolerance", 2, 50, "cpu", pods(2), all_use(&pods(2), "54m"), Ok((2, 54))),
            ("just outside it", 2, 50, "cpu", pods(2), all_use(&pods(2), "56m"), Ok((3, 56))),
            ("twice the target: twice the pods", 2, 50, "cpu", pods(2), all_use(&pods(2), "100m"), Ok((4, 100))),
            ("a fifth of it", 5, 50, "cpu", pods(5), all_use(&pods(5), "10m"), Ok((1, 10))),
            // Upstream multiplies by the pods measured; kinglet used the scale's replicas (10).
            ("pods measured, not the scale's replicas", 5, 50, "cpu", pods(2), all_use(&pods(2), "100m"), Ok((4, 100))),
            // 49.9% truncates to 49%, within the tolerance of 45%; 49.9 / 45 would not be.
            ("utilisation in whole percent", 2, 45, "cpu", vec![one_cpu("p0"), one_cpu("p1")], all_use(&pods(2), "499m"), Ok((2, 49))),
            ("missing metrics count as idle on the way up", 3, 50, "cpu", pods(3), metrics(&[("p0", "100m"), ("p1", "100m")]), Ok((4, 100))),
            ("missing metrics count as fully used on the way down", 3, 80, "cpu", pods(3), metrics(&[("p0", "10m"), ("p1", "10m")]), Ok((2, 10))),
            ("missing metrics that turn the direction: no change", 3, 50, "cpu", pods(3), metrics(&[("p0", "60m"), ("p1", "60m")]), Ok((3, 60))),
            ("pending pods count as idle on the way up", 3, 50, "cpu", two_plus(pod("p2", pending.clone())), metrics(&[("p0", "100m"), ("p1", "100m")]), Ok((4, 100))),
            ("pending pods are left out on the way down", 3, 50, "cpu", two_plus(pod("p2", pending)), metrics(&[("p0", "10m"), ("p1", "10m")]), Ok((1, 10))),
            ("terminating and failed pods are left out", 4, 50, "cpu",
                vec![pod("p0", json!({})), pod("p1", json!({})), pod("p2", json!({"metadata": {"deletionTimestamp": ago(1)}})), pod("p3", json!({"status": {"phase": "Failed"}}))],
                metrics(&[("p0", "100m"), ("p1", "100m"), ("p2", "0"), ("p3", "0")]), Ok((4, 100))),
            ("cpu: a pod ready only after its sample is left out", 3, 50, "cpu",
                two_plus(pod("p2", json!({"status": {"startTime": ago(60), "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(3)}]}}))),
                metrics(&[("p0", "10m"), ("p1", "10m"), ("p2", "500m")]), Ok((1, 10))),
            ("cpu: a pod ready long ago counts", 3, 50, "cpu", pods(3), metrics(&[("p0", "10m"), ("p1", "10m"), ("p2", "100m")]), Ok((3, 40))),
            ("memory: readiness does not matter", 2, 50, "memory",
                vec![pod("p0", json!({})), pod("p1", json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": ago(5)}]}}))],
                metrics(&[("p0", "1m"), ("p1", "1m")]), Ok((2, 50))),
            ("sidecars' requests count", 2, 50, "cpu", vec![pod("p0", sidecar.clone()), pod("p1", sidecar)], all_use(&pods(2), "100m"), Ok((2, 50))),
            ("a container without a request", 2, 50, "cpu", vec![pod("p0", json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}))], all_use(&pods(1), "1m"),
                Err("missing request for cpu in container c of Pod p0")),
            ("no pods", 2, 50, "cpu", vec![], metrics(&[]), Err("no pods returned by selector")),
            ("no metrics", 2, 50, "cpu", pods(2), metrics(&[]), Err("did not receive metrics")),
        ];
        let mut table = Table::default();
        for (case, current, target, resource, pods, metrics, want) in cases {
            let got = resource_replicas(current, target, resource, &pods, &metrics, now());
            // An error is right if it starts with the expected text.
            let got = got.map_err(|e| match want {
                Err(start) if e.starts_with(start) => start,
                _ => "another error",
            });
            table.check(case, got, want);
        }
        table.done();
    }

    /// HPA `web` on CPU at 50% (plus memory at `memory` % if any), 1..10 replicas, plus `patch`.
    fn hpa(memory: Option<i32>, patch: Value) -> HorizontalPodAutoscaler {
        let mut metrics = vec![
            json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}),
        ];
        if let Some(m) = memory {
            metrics.push(json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": m}}}));
        }
        let base = json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 10, "metrics": metrics},
        });
        typed(merged(base, patch))
    }

    /// The plan's rescale, its events' reasons, and its conditions as "Type=Status/Reason".
    fn outcome(plan: &Plan) -> (Option<(i32, i32)>, Vec<String>, Vec<String>) {
        let events = plan.events.iter().map(|(_, r, _)| r.clone()).collect();
        let conds = (plan.status.iter())
            .flat_map(|s| s["conditions"].as_array().cloned().unwrap_or_default())
            .map(|c| {
                format!(
                    "{}={}/{}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or("")
                )
            })
            .collect();
        (plan.rescale, events, conds)
    }

    #[test]
    fn scaling_decisions() {
        let at = |current: i32, cpu: &str| Observed {
            scale: Ok((current, "app=web".into())),
            readings: Some(Ok((
                pods(current as usize),
                all_use(&pods(current as usize), cpu),
            ))),
        };
        let history = |v: &[(i64, i32)]| -> VecDeque<(i64, i32)> {
            v.iter()
                .map(|(ago, r)| (now().as_second() - ago, *r))
                .collect()
        };
        let none = VecDeque::new;
        let behavior = |up: i32, down: i32| json!({"spec": {"behavior": {"scaleUp": {"stabilizationWindowSeconds": up}, "scaleDown": {"stabilizationWindowSeconds": down}}}});
        let active = "AbleToScale=True/SucceededGetScale";
        let valid = "ScalingActive=True/ValidMetricFound";
        let in_range = "ScalingLimited=False/DesiredWithinRange";
        // (case, memory target, HPA patch, observed, history (seconds ago, replicas), (rescale, events, conditions))
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<i32>, Value, Observed, VecDeque<(i64, i32)>, (Option<(i32, i32)>, Vec<&str>, Vec<&str>))> = vec![
            ("up to what the metrics ask", None, json!({}), at(2, "100m"), none(), (Some((2, 4)), vec![], vec![active, valid, in_range])),
            ("at the target: nothing", None, json!({}), at(2, "50m"), none(), (None, vec![], vec![active, valid, in_range])),
            ("maxReplicas bounds", None, json!({"spec": {"maxReplicas": 3}}), at(2, "100m"), none(), (Some((2, 3)), vec![], vec![active, valid, "ScalingLimited=True/TooManyReplicas"])),
            ("minReplicas bounds", None, json!({"spec": {"minReplicas": 2}}), at(2, "10m"), none(), (None, vec![], vec![active, valid, "ScalingLimited=True/TooFewReplicas"])),
            ("down, with nothing recent", None, json!({}), at(4, "10m"), none(), (Some((4, 1)), vec![], vec![active, valid, in_range])),
            ("down only to the highest recommendation of 5 minutes", None, json!({}), at(4, "10m"), history(&[(100, 3), (200, 2)]), (Some((4, 3)), vec![], vec![active, valid, in_range])),
            ("a recent higher one holds it", None, json!({}), at(4, "10m"), history(&[(250, 6)]), (None, vec![], vec![active, valid, in_range])),
            ("older than the window: forgotten", None, json!({}), at(4, "10m"), history(&[(400, 4)]), (Some((4, 1)), vec![], vec![active, valid, in_range])),
            ("up is not held back by default", None, json!({}), at(2, "100m"), history(&[(10, 2)]), (Some((2, 4)), vec![], vec![active, valid, in_range])),
            // Kinglet ignored spec.behavior.
            ("behavior: no scale-down window", None, behavior(0, 0), at(4, "10m"), history(&[(100, 4)]), (Some((4, 1)), vec![], vec![active, valid, in_range])),
            ("behavior: a scale-up window holds the lowest recent", None, behavior(60, 300), at(2, "100m"), history(&[(30, 3)]), (Some((2, 3)), vec![], vec![active, valid, in_range])),
            ("target at 0 replicas: scaling disabled", None, json!({}), Observed { scale: Ok((0, "app=web".into())), readings: None }, none(),
                (None, vec![], vec![active, "ScalingActive=False/ScalingDisabled", "ScalingLimited=True/TooFewReplicas"])),
            ("scale unreadable: an event, nothing else", None, json!({}), Observed { scale: Err("not found".into()), readings: None }, none(), (None, vec!["FailedGetScale"], vec![])),
            ("metrics unreadable: no scaling", None, json!({}), Observed { scale: Ok((2, "app=web".into())), readings: Some(Err("no metrics".into())) }, none(),
                (None, vec!["FailedGetResourceMetric"], vec![active, "ScalingActive=False/FailedGetResourceMetric", in_range])),
            ("memory at its target holds CPU's scale-down", Some(50), json!({}),
                Observed { scale: Ok((4, "app=web".into())), readings: Some(Ok((pods(4), metrics(&[("p0", "10m"), ("p1", "10m"), ("p2", "10m"), ("p3", "10m")]))) ) }, none(),
                (None, vec![], vec![active, valid, in_range])),
            ("the larger proposal wins", Some(25), json!({}), at(2, "50m"), none(), (Some((2, 4)), vec![], vec![active, valid, in_range])),
            ("a metric without a utilisation target", None, json!({"spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "100m"}}}]}}),
                at(2, "100m"), none(), (None, vec![], vec![active, "ScalingActive=False/InvalidMetricSourceType", in_range])),
        ];
        let mut table = Table::default();
        for (case, memory, patch, observed, hist, (rescale, events, conds)) in cases {
            let got = outcome(&plan(&hpa(memory, patch), &observed, &hist, now()));
            let strings = |v: Vec<&str>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            table.check(case, got, (rescale, strings(events), strings(conds)));
        }
        table.done();
    }

    // Upstream does not scale down while a metric fails; kinglet used the others.
    #[test]
    fn failing_metric_beside_a_scale_down() {
        // Memory fails for want of requests; CPU alone would scale 4 to 1.
        let no_memory = |name: &str| {
            pod(
                name,
                json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "100m"}}}]}}),
            )
        };
        let ps: Vec<Pod> = (0..4).map(|i| no_memory(&format!("p{i}"))).collect();
        let observed = Observed {
            scale: Ok((4, "app=web".into())),
            readings: Some(Ok((ps.clone(), all_use(&ps, "10m")))),
        };
        let got = outcome(&plan(
            &hpa(Some(50), json!({})),
            &observed,
            &VecDeque::new(),
            now(),
        ));
        assert_eq!(got.0, None);
        assert_eq!(got.1, vec!["FailedGetResourceMetric".to_string()]);
        assert!(
            got.2
                .contains(&"ScalingActive=False/FailedGetResourceMetric".to_string())
        );
        // The same with a scale up: CPU wins.
        let observed = Observed {
            scale: Ok((4, "app=web".into())),
            readings: Some(Ok((ps.clone(), all_use(&ps, "100m")))),
        };
        assert_eq!(
            plan(
                &hpa(Some(50), json!({})),
                &observed,
                &VecDeque::new(),
                now()
            )
            .rescale,
            Some((4, 8))
        );
    }

    #[test]
    fn history_and_condition_times() {
        let observed = Observed {
            scale: Ok((2, "app=web".into())),
            readings: Some(Ok((pods(2), all_use(&pods(2), "50m")))),
        };
        let old = VecDeque::from([(now().as_second() - 400, 5), (now().as_second() - 100, 3)]);
        let planned = plan(&hpa(None, json!({})), &observed, &old, now());
        // The window keeps 5 minutes and adds this recommendation.
        assert_eq!(
            planned.history,
            Some(VecDeque::from([
                (now().as_second() - 100, 3),
                (now().as_second(), 2)
            ]))
        );
        // A condition whose status stays keeps its transition time; one that changes gets now.
        let prev = json!({"status": {"currentReplicas": 2, "desiredReplicas": 2, "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "lastTransitionTime": ago(3600)},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric", "lastTransitionTime": ago(3600)}]}});
        let status = plan(&hpa(None, prev), &observed, &VecDeque::new(), now())
            .status
            .expect("status");
        let since = |t: &str| {
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()["lastTransitionTime"]
                .clone()
        };
        assert_eq!(since("AbleToScale"), json!(ago(3600)));
        assert_eq!(since("ScalingActive"), json!(now().to_string()));
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("10s", 10),
            ("1m30s", 90),
            ("1h", 3600),
            ("500ms", 0),
            ("2.5s", 2),
            ("", 0),
        ];
        let mut table = Table::default();
        for (d, want) in cases {
            table.check(d, go_duration_secs(d), want);
        }
        table.done();
    }
}
