//! Pod subresources served by the pod's node: the API server finds the node's kubelet
//! (InternalIP and kubelet port from the Node) and forwards the request over HTTPS, presenting
//! its kubelet-client certificate, then streams the answer back (`kubectl logs -f`).

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use serde_json::Value;

use super::Api;
use super::context::Ctx;
use super::handlers::get_current;
use super::registry::Resource;
use super::status::{ApiError, ApiResult};

/// TLS settings for talking to kubelets: the cluster CA and the API server's client identity.
pub struct KubeletClient {
    pub tls: Arc<rustls::ClientConfig>,
}

fn containers_of(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// `GET pods/<name>/log`.
pub async fn pod_log(api: &Arc<Api>, res: &Resource, ctx: &Ctx, name: &str) -> ApiResult<Response> {
    let (_, pod) = get_current(api, res, ctx, name).await?;
    let ns = ctx.path.namespace.clone().unwrap_or_default();
    let names = containers_of(&pod);
    let all: Vec<String> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .chain(names.iter().cloned())
        .collect();
    let container = match ctx.query.get("container") {
        Some(c) if all.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    let query: Vec<String> = [
        "follow",
        "previous",
        "sinceSeconds",
        "sinceTime",
        "tailLines",
        "timestamps",
        "limitBytes",
    ]
    .iter()
    .filter_map(|k| ctx.query.get(k).map(|v| format!("{k}={}", urlencode(v))))
    .collect();
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", query.join("&"));
    forward(api, &pod, name, &path).await
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the kubelet of the node `pod` is bound to listens.
async fn kubelet_address(api: &Arc<Api>, pod: &Value, name: &str) -> ApiResult<(String, u16)> {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let nodes = api
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(ApiError::path_not_found)?;
    let ctx = Ctx::internal("", "v1", "nodes", None);
    let (_, node_obj) = get_current(api, &nodes, &ctx, node).await?;
    let ip = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| {
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("node {node} has no InternalIP"),
            )
        })?
        .to_string();
    let port = node_obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250) as u16;
    Ok((ip, port))
}

/// Sends `GET path` to the pod's kubelet and streams its answer back.
async fn forward(api: &Arc<Api>, pod: &Value, name: &str, path: &str) -> ApiResult<Response> {
    let (ip, port) = kubelet_address(api, pod, name).await?;
    let Some(client) = api.kubelet_client.get() else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the API server has no kubelet client credentials",
        ));
    };
    let unavailable = |e: String| {
        ApiError::new(
            500,
            "InternalError",
            format!("Get \"https://{ip}:{port}{path}\": {e}"),
        )
    };
    let tcp = tokio::net::TcpStream::connect((ip.as_str(), port))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let server_name = rustls::pki_types::ServerName::try_from(ip.clone())
        .map_err(|e| unavailable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(client.tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("{ip}:{port}"))
        .body(Body::empty())
        .map_err(|e| unavailable(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&bytes).trim().to_string();
        let reason = match status.as_u16() {
            400 => "BadRequest",
            404 => "NotFound",
            _ => "InternalError",
        };
        return Err(ApiError::new(status.as_u16(), reason, message));
    }
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        out.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.clone());
    }
    Ok(out)
}
