//! HorizontalPodAutoscaler (autoscaling/v2) on CPU and memory utilisation, read from the
//! `metrics.k8s.io` API (served once the kubelet reports metrics). Desired replicas follow
//! upstream's formula `ceil(current * utilisation / target)` with a 10% tolerance, bounded by
//! min/max, scaling down only after a 5-minute stabilisation window.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

use super::util::{Context, is_ready, merge_status};
use crate::scheduler::resources::parse_milli;

const TOLERANCE: f64 = 0.1;
const DOWNSCALE_WINDOW_SECS: i64 = 300;
const SYNC: Duration = Duration::from_secs(15);

struct HpaCtx {
    ctx: Arc<Context>,
    /// Recent recommendations per HPA (time, replicas), for the scale-down window.
    history: Mutex<HashMap<String, VecDeque<(i64, i32)>>>,
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message, "lastTransitionTime": Timestamp::now().to_string()})
}

/// Utilisation (percent of requests) of `resource` over the ready pods, from pod metrics.
async fn utilisation(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    resource: &str,
) -> Result<(f64, usize), String> {
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
    let metrics: Value = client.request(req).await.map_err(|e| format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API ({e})"))?;
    let usage: BTreeMap<String, i128> = metrics["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let total = m["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["usage"][resource].as_str().and_then(parse_milli))
                .sum();
            (
                m["metadata"]["name"].as_str().unwrap_or("").to_string(),
                total,
            )
        })
        .collect();
    let (mut used, mut requested, mut counted) = (0i128, 0i128, 0usize);
    for p in pods
        .iter()
        .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
    {
        let Some(u) = usage.get(&p.name_any()) else {
            continue;
        };
        let r: i128 = p
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
            .filter_map(|q| parse_milli(&q.0))
            .sum();
        if r == 0 {
            return Err(format!(
                "failed to get {resource} utilization: missing request for {resource} in container of pod {}",
                p.name_any()
            ));
        }
        used += u;
        requested += r;
        counted += 1;
    }
    if counted == 0 {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    Ok((used as f64 * 100.0 / requested as f64, counted))
}

async fn reconcile(
    hpa: Arc<HorizontalPodAutoscaler>,
    hc: Arc<HpaCtx>,
) -> Result<Action, kube::Error> {
    let ctx = &hc.ctx;
    let ns = hpa.namespace().unwrap_or_default();
    let spec = hpa.spec.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let group = target.api_version.as_deref().unwrap_or("apps/v1");
    let plural = format!("{}s", target.kind.to_lowercase());
    let scale_path = format!(
        "/apis/{group}/namespaces/{ns}/{plural}/{}/scale",
        target.name
    );
    let scale: Value = match ctx
        .client
        .request(
            http::Request::get(&scale_path)
                .body(Vec::new())
                .map_err(kube::Error::HttpError)?,
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            ctx.event(hpa.as_ref(), true, "FailedGetScale", e.to_string())
                .await;
            return Ok(Action::requeue(SYNC));
        }
    };
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
    let selector = scale["status"]["selector"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (min, max) = (spec.min_replicas.unwrap_or(1), spec.max_replicas);
    let mut conditions = vec![cond(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    )];
    let mut desired = current;
    let mut current_metrics = Vec::new();
    if current == 0 {
        conditions.push(cond(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        ));
    } else {
        let mut proposals = Vec::new();
        let mut failure = None;
        for m in spec
            .metrics
            .iter()
            .flatten()
            .filter(|m| m.type_ == "Resource")
        {
            let Some(res) = m.resource.as_ref() else {
                continue;
            };
            let Some(want) = res.target.average_utilization else {
                continue;
            };
            match utilisation(&ctx.client, &ns, &selector, &res.name).await {
                Ok((util, _)) => {
                    let ratio = util / f64::from(want.max(1));
                    let n = if (ratio - 1.0).abs() <= TOLERANCE {
                        current
                    } else {
                        (f64::from(current) * ratio).ceil() as i32
                    };
                    proposals.push(n);
                    current_metrics.push(json!({"type": "Resource", "resource": {"name": res.name, "current": {"averageUtilization": util.round() as i64}}}));
                }
                Err(e) => failure = Some(e),
            }
        }
        match (proposals.iter().max(), failure) {
            (Some(n), _) => {
                desired = *n;
                conditions.push(cond("ScalingActive", true, "ValidMetricFound", "the HPA was able to successfully calculate a replica count from resource utilization"));
            }
            (None, Some(e)) => {
                ctx.event(hpa.as_ref(), true, "FailedGetResourceMetric", e.clone())
                    .await;
                conditions.push(cond("ScalingActive", false, "FailedGetResourceMetric", &e));
            }
            (None, None) => conditions.push(cond(
                "ScalingActive",
                false,
                "InvalidMetricSourceType",
                "no supported metric is configured",
            )),
        }
    }
    // Scale down only to the highest recommendation of the stabilisation window.
    let now = Timestamp::now().as_second();
    let key = format!("{ns}/{}", hpa.name_any());
    {
        let mut all = hc.history.lock().unwrap_or_else(|e| e.into_inner());
        let h = all.entry(key).or_default();
        h.push_back((now, desired));
        while h
            .front()
            .is_some_and(|(t, _)| *t < now - DOWNSCALE_WINDOW_SECS)
        {
            h.pop_front();
        }
        if desired < current {
            desired = h
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(desired)
                .min(current);
        }
    }
    let bounded = desired.clamp(min, max.max(min));
    conditions.push(if bounded != desired {
        cond(
            "ScalingLimited",
            true,
            if bounded > desired {
                "TooFewReplicas"
            } else {
                "TooManyReplicas"
            },
            "the desired replica count is outside the allowed range",
        )
    } else {
        cond(
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    });
    let desired = if current == 0 { 0 } else { bounded };
    let mut last_scale = hpa
        .status
        .as_ref()
        .and_then(|s| s.last_scale_time.clone())
        .map(|t| t.0.to_string());
    if desired != current {
        let patch = serde_json::to_vec(&json!({"spec": {"replicas": desired}})).unwrap_or_default();
        let req = http::Request::patch(&scale_path)
            .header("Content-Type", "application/merge-patch+json")
            .body(patch)
            .map_err(kube::Error::HttpError)?;
        ctx.client.request_text(req).await?;
        let reason = if desired > current { "above" } else { "below" };
        ctx.event(
            hpa.as_ref(),
            false,
            "SuccessfulRescale",
            format!("New size: {desired}; reason: All metrics {reason} target"),
        )
        .await;
        last_scale = Some(Timestamp::now().to_string());
    }
    let status = json!({"currentReplicas": current, "desiredReplicas": desired, "currentMetrics": current_metrics,
        "lastScaleTime": last_scale, "observedGeneration": hpa.metadata.generation, "conditions": conditions});
    merge_status(&ctx.client, hpa.as_ref(), &status).await?;
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
