//! `metrics.k8s.io/v1beta1`, served in-process as metrics-server serves it: NodeMetrics and
//! PodMetrics from each kubelet's `/stats/summary`, read on request. CPU is the rate over the
//! kubelet's last sampling interval (in nanocores), memory the working set.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::Method;
use serde_json::{Value, json};

use super::Api;
use super::lifecycle::decorate;
use super::registry::Resource;
use super::request::{Query, ResourcePath};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};

/// The kubelet's sampling interval: the window every rate covers.
const WINDOW: &str = "10s";
const KUBELET_TIMEOUT: Duration = Duration::from_secs(5);

fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

fn usage(stats: &Value) -> Option<Value> {
    let cpu = stats.pointer("/cpu/usageNanoCores")?.as_u64()?;
    let mem = stats.pointer("/memory/workingSetBytes")?.as_u64()?;
    Some(json!({"cpu": format!("{cpu}n"), "memory": memory(mem)}))
}

fn metadata(obj: &Value) -> Value {
    let mut m = json!({
        "name": obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "creationTimestamp": super::object::now_time(),
    });
    if let Some(ns) = obj.pointer("/metadata/namespace") {
        m["namespace"] = ns.clone();
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        m["labels"] = labels.clone();
    }
    m
}

/// Every stored object of the core resource `plural`.
async fn objects(api: &Arc<Api>, plural: &str) -> ApiResult<Vec<Value>> {
    let res = api
        .registry
        .find("", "v1", plural)
        .ok_or_else(ApiError::path_not_found)?;
    let page = api
        .store
        .list(&res.prefix(), 0, None, None)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    page.items.iter().map(|r| decorate(&res, r)).collect()
}

/// The summaries of every node that answers within the timeout, with its Node object.
async fn summaries(api: &Arc<Api>, nodes: &[Value]) -> Vec<(Value, Value)> {
    let calls = nodes.iter().map(|n| async move {
        let got = tokio::time::timeout(
            KUBELET_TIMEOUT,
            super::node_proxy::node_get_json(api, n, "/stats/summary"),
        )
        .await;
        match got {
            Ok(Ok(summary)) => Some((n.clone(), summary)),
            _ => None,
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn selectors(query: &Query) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    if let Some((f, _, _)) = fields
        .terms
        .iter()
        .find(|(f, _, _)| f != "metadata.name" && f != "metadata.namespace")
    {
        return Err(ApiError::bad_request(format!(
            "field label not supported: {f}"
        )));
    }
    Ok((labels, fields))
}

fn selected(obj: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches_object(obj)
        && fields.matches(|f| {
            let path = match f {
                "metadata.name" => "/metadata/name",
                _ => "/metadata/namespace",
            };
            obj.pointer(path).and_then(Value::as_str).map(String::from)
        })
}

fn respond(code: u16, body: &Value) -> Response {
    super::json_body(code, "application/json", body)
}

/// `GET` of `nodes` or `pods` (listed or by name) of metrics.k8s.io/v1beta1.
pub async fn serve(
    api: &Arc<Api>,
    res: &Resource,
    path: &ResourcePath,
    query: &Query,
    method: &Method,
) -> ApiResult<Response> {
    if *method != Method::GET || query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            res.plural
        )));
    }
    if path.subresource.is_some() {
        return Err(ApiError::path_not_found());
    }
    let (labels, fields) = selectors(query)?;
    let nodes = objects(api, "nodes").await?;
    let (list_kind, items) = if res.plural == "nodes" {
        let wanted: Vec<Value> = nodes
            .into_iter()
            .filter(|n| {
                path.name
                    .as_deref()
                    .is_none_or(|name| n.pointer("/metadata/name") == Some(&json!(name)))
                    && selected(n, &labels, &fields)
            })
            .collect();
        let items: Vec<Value> = summaries(api, &wanted)
            .await
            .into_iter()
            .filter_map(|(node, summary)| {
                Some(json!({
                    "metadata": metadata(&node),
                    "timestamp": summary.pointer("/node/cpu/time")?,
                    "window": WINDOW,
                    "usage": usage(&summary["node"])?,
                }))
            })
            .collect();
        ("NodeMetricsList", items)
    } else {
        let pods: std::collections::HashMap<(String, String), Value> = objects(api, "pods")
            .await?
            .into_iter()
            .filter_map(|p| {
                let key = (
                    p.pointer("/metadata/namespace")?.as_str()?.to_string(),
                    p.pointer("/metadata/name")?.as_str()?.to_string(),
                );
                Some((key, p))
            })
            .collect();
        let find = |ns: &str, name: &str| pods.get(&(ns.to_string(), name.to_string()));
        // One pod by name: only its node has its metrics.
        let wanted_node = match (&path.namespace, &path.name) {
            (Some(ns), Some(name)) => find(ns, name)
                .and_then(|p| p.pointer("/spec/nodeName"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => None,
        };
        let nodes: Vec<Value> = nodes
            .into_iter()
            .filter(|n| {
                wanted_node
                    .as_deref()
                    .is_none_or(|w| n.pointer("/metadata/name").and_then(Value::as_str) == Some(w))
            })
            .collect();
        let mut items = Vec::new();
        for (_, summary) in summaries(api, &nodes).await {
            for stats in summary["pods"].as_array().into_iter().flatten() {
                let ns = stats["podRef"]["namespace"].as_str().unwrap_or_default();
                let name = stats["podRef"]["name"].as_str().unwrap_or_default();
                let Some(pod) = find(ns, name) else { continue };
                let in_scope = path.namespace.as_deref().is_none_or(|n| n == ns)
                    && path.name.as_deref().is_none_or(|n| n == name)
                    && selected(pod, &labels, &fields);
                let containers: Option<Vec<Value>> = stats["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| Some(json!({"name": c["name"], "usage": usage(c)?})))
                    .collect();
                // Like metrics-server: a pod without a rate for every container is left out.
                if let (true, Some(containers)) = (in_scope, containers) {
                    items.push(json!({
                        "metadata": metadata(pod),
                        "timestamp": stats.pointer("/cpu/time").cloned().unwrap_or(Value::Null),
                        "window": WINDOW,
                        "containers": containers,
                    }));
                }
            }
        }
        ("PodMetricsList", items)
    };
    let api_version = "metrics.k8s.io/v1beta1";
    if let Some(name) = &path.name {
        let kind = list_kind.trim_end_matches("List");
        return match items.into_iter().next() {
            Some(mut item) => {
                item["kind"] = json!(kind);
                item["apiVersion"] = json!(api_version);
                Ok(respond(200, &item))
            }
            None => {
                let shown = match &path.namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                };
                Err(ApiError::new(
                    404,
                    "NotFound",
                    format!(
                        "{}.metrics.k8s.io \"{shown}\" not found",
                        kind.to_lowercase()
                    ),
                ))
            }
        };
    }
    Ok(respond(
        200,
        &json!({"kind": list_kind, "apiVersion": api_version, "metadata": {}, "items": items}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_in_metrics_server_units() {
        let stats =
            json!({"cpu": {"usageNanoCores": 1234567}, "memory": {"workingSetBytes": 2048}});
        assert_eq!(
            usage(&stats).unwrap(),
            json!({"cpu": "1234567n", "memory": "2Ki"})
        );
        // No rate yet: no metrics rather than a zero.
        assert!(usage(&json!({"memory": {"workingSetBytes": 1}})).is_none());
        assert_eq!(memory(1000), "1000");
    }
}
