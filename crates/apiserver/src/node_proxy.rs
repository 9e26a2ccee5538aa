//! Pod subresources served by the pod's node: the API server finds the node's kubelet
//! (InternalIP and kubelet port from the Node) and forwards the request over HTTPS, presenting
//! its kubelet-client certificate, then streams the answer back (`kubectl logs -f`). A node
//! with a tunnel open (an agent, `tunnel`) is reached through it rather than over TCP, with the
//! same TLS inside.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use serde_json::Value;

use super::Api;
use super::context::Ctx;
use super::lifecycle::get_current;
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

/// The node `pod` is bound to, and where its kubelet listens.
async fn kubelet_address(
    api: &Arc<Api>,
    pod: &Value,
    name: &str,
) -> ApiResult<(String, String, u16)> {
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
    let (ip, port) = node_address(&node_obj)?;
    Ok((node.to_string(), ip, port))
}

/// The kubelet endpoint a Node object advertises (InternalIP and kubelet port).
pub fn node_address(node: &Value) -> ApiResult<(String, u16)> {
    let ip = node
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
                format!(
                    "node {} has no InternalIP",
                    node.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
            )
        })?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(10250);
    Ok((ip, port))
}

/// Sends `req` to the pod's kubelet (the connection allows upgrades).
async fn send(
    api: &Arc<Api>,
    pod: &Value,
    name: &str,
    req: http::Request<Body>,
) -> ApiResult<http::Response<hyper::body::Incoming>> {
    let (node, ip, port) = kubelet_address(api, pod, name).await?;
    send_to(api, &node, &ip, port, req).await
}

/// A byte stream to a kubelet: TCP, or a stream of its node's tunnel.
pub(crate) trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// A connection to the kubelet of `node` at `ip:port`: through the node's tunnel when it has
/// one open, else over TCP.
pub(crate) async fn dial_kubelet(
    api: &Api,
    node: &str,
    ip: &str,
    port: u16,
) -> Result<Box<dyn Conn>, String> {
    if let Some(stream) = api.tunnels.open(node).await {
        return Ok(Box::new(stream.map_err(|e| format!("node {node}'s {e}"))?));
    }
    let tcp = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(tcp))
}

/// How long reaching a kubelet (connection and TLS handshake) may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends `req` to the kubelet of `node` at `ip:port`.
async fn send_to(
    api: &Arc<Api>,
    node: &str,
    ip: &str,
    port: u16,
    req: http::Request<Body>,
) -> ApiResult<http::Response<hyper::body::Incoming>> {
    let Some(client) = api.kubelet_client.get() else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the API server has no kubelet client credentials",
        ));
    };
    let path = req.uri().to_string();
    let unavailable = |e: String| {
        ApiError::new(
            500,
            "InternalError",
            format!("error dialing backend https://{ip}:{port}{path}: {e}"),
        )
    };
    let server_name = rustls::pki_types::ServerName::try_from(ip.to_string())
        .map_err(|e| unavailable(e.to_string()))?;
    let dial = async {
        let conn = dial_kubelet(api, node, ip, port).await?;
        tokio_rustls::TlsConnector::from(client.tls.clone())
            .connect(server_name, conn)
            .await
            .map_err(|e| e.to_string())
    };
    let tls = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| unavailable("i/o timeout".into()))?
        .map_err(unavailable)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = req;
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_str(&format!("{ip}:{port}"))
            .map_err(|e| unavailable(e.to_string()))?,
    );
    sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

/// `GET path` of the kubelet of `node`, as JSON.
pub async fn node_get_json(api: &Arc<Api>, node: &Value, path: &str) -> ApiResult<Value> {
    let (ip, port) = node_address(node)?;
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let req = http::Request::get(path)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send_to(api, name, &ip, port, req).await?;
    if !resp.status().is_success() {
        return Err(kubelet_error(resp).await);
    }
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(format!("kubelet answer: {e}")))
}

/// A kubelet's error answer as a Status.
async fn kubelet_error(resp: http::Response<hyper::body::Incoming>) -> ApiError {
    let status = resp.status();
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
    ApiError::new(status.as_u16(), reason, message)
}

/// Sends `GET path` to the pod's kubelet and streams its answer back.
async fn forward(api: &Arc<Api>, pod: &Value, name: &str, path: &str) -> ApiResult<Response> {
    let req = http::Request::get(path)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send(api, pod, name, req).await?;
    if !resp.status().is_success() {
        return Err(kubelet_error(resp).await);
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

/// Headers that carry a connection upgrade and its protocol negotiation, both ways.
const UPGRADE_HEADERS: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// Whether a request is spliced to a node or a proxied backend rather than buffered and
/// handled as a resource.
pub fn is_spliced(r: &crate::request::ResourcePath) -> bool {
    super::proxy::is_proxy(r)
        || r.group.is_empty()
            && r.resource == "pods"
            && r.namespace.is_some()
            && r.name.is_some()
            && matches!(
                r.subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            )
}

/// Serves a request that [`is_spliced`] chose.
pub async fn splice(
    api: &Arc<Api>,
    r: &crate::request::ResourcePath,
    query: crate::request::Query,
    parts: http::request::Parts,
    body: Body,
) -> ApiResult<Response> {
    if super::proxy::is_proxy(r) {
        return super::proxy::serve(api, r, parts, body).await;
    }
    let (Some(name), Some(sub)) = (&r.name, &r.subresource) else {
        return Err(ApiError::path_not_found());
    };
    let mut ctx = Ctx::internal("", "v1", "pods", r.namespace.as_deref());
    ctx.query = query;
    stream(api, &ctx, parts, name, sub).await
}

/// `pods/<name>/exec|attach|portforward`: the upgraded connection is spliced to the kubelet's.
async fn stream(
    api: &Arc<Api>,
    ctx: &Ctx,
    mut parts: http::request::Parts,
    name: &str,
    sub: &str,
) -> ApiResult<Response> {
    let res = api
        .registry
        .find("", "v1", "pods")
        .ok_or_else(ApiError::path_not_found)?;
    let (_, pod) = get_current(api, &res, ctx, name).await?;
    let ns = ctx.path.namespace.clone().unwrap_or_default();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let path = if sub == "portforward" {
        format!("/portForward/{ns}/{name}?{query}")
    } else {
        let names = containers_of(&pod);
        let container = match ctx.query.get("container") {
            Some(c) => c.to_string(),
            None if names.len() == 1 => names[0].clone(),
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                )));
            }
        };
        format!("/{sub}/{ns}/{name}/{container}?{query}")
    };
    let Some(client_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(&path);
    for h in UPGRADE_HEADERS {
        for v in parts.headers.get_all(h) {
            req = req.header(h, v);
        }
    }
    let req = req
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = send(api, &pod, name, req).await?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(kubelet_error(resp).await);
    }
    let mut out = Response::new(Body::empty());
    *out.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    for h in UPGRADE_HEADERS {
        for v in resp.headers().get_all(h) {
            out.headers_mut().append(h, v.clone());
        }
    }
    join_upgraded(client_upgrade, &mut resp);
    Ok(out)
}

/// Joins the client's upgraded connection to the backend's once both have switched protocols:
/// from then on bytes flow both ways untouched.
pub(crate) fn join_upgraded<B>(client: hyper::upgrade::OnUpgrade, backend: &mut http::Response<B>) {
    let backend = hyper::upgrade::on(backend);
    tokio::spawn(async move {
        let (Ok(client), Ok(backend)) = (client.await, backend.await) else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut backend = hyper_util::rt::TokioIo::new(backend);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    });
}
