//! The proxy subresources: `pods/<name>/proxy`, `services/<name>/proxy` and
//! `nodes/<name>/proxy` forward any request (and connection upgrades) to a pod, to a ready
//! endpoint of a service, or to a node's kubelet, and stream the answer back, as upstream's
//! `UpgradeAwareHandler` does. The name may carry a port and a scheme: `name:port`,
//! `https:name:port`.
//!
//! Security: only addresses taken from the API objects are dialled (a pod's IP, an endpoint
//! address that belongs to a pod holding that IP, a node's InternalIP), and like upstream's
//! `IsProxyableIP` never a loopback, link-local, multicast or unspecified one, so that a user
//! allowed to proxy cannot reach services listening on the API server's own host.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Api;
use super::context::Ctx;
use super::lifecycle::get_current;
use super::node_proxy::node_address;
use super::request::ResourcePath;
use super::status::{ApiError, ApiResult};

/// How long dialling a backend may take (upstream's proxy transport uses 30s).
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `r` is a proxy subresource request.
pub fn is_proxy(r: &ResourcePath) -> bool {
    r.group.is_empty()
        && r.version == "v1"
        && !r.legacy_watch
        && r.name.is_some()
        && r.subresource.as_deref() == Some("proxy")
        && match r.resource.as_str() {
            "pods" | "services" => r.namespace.is_some(),
            "nodes" => r.namespace.is_none(),
            _ => false,
        }
}

/// Where a proxied request goes.
struct Target {
    addr: SocketAddr,
    /// TLS settings when the backend speaks HTTPS.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The node whose kubelet this is: reached through the node's tunnel when it has one.
    kubelet_of: Option<String>,
}

/// Serves a request that [`is_proxy`] chose.
pub async fn serve(
    api: &Arc<Api>,
    r: &ResourcePath,
    mut parts: http::request::Parts,
    body: Body,
) -> ApiResult<Response> {
    let Some(id) = r.name.as_deref() else {
        return Err(ApiError::path_not_found());
    };
    let path = parts.uri.path().to_string();
    // `api/v1[/namespaces/<ns>]/<resource>/<name>/proxy`: what follows goes to the backend as is.
    let tail = raw_tail(&path, if r.namespace.is_some() { 7 } else { 5 });
    let prefix = &path[..path.len() - tail.len()];
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let upgrade = is_upgrade(&parts.headers);
    // As upstream: `.../proxy` redirects to `.../proxy/` so relative links resolve.
    if tail.is_empty() && !upgrade && matches!(parts.method, Method::GET | Method::HEAD) {
        return Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            // From the normalised path: a raw `//api/...` would make it protocol-relative.
            .header(
                header::LOCATION,
                format!("/{}/{query}", path.trim_start_matches('/')),
            )
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let ns = r.namespace.as_deref().unwrap_or_default();
    let target = match r.resource.as_str() {
        "pods" => pod_target(api, ns, id).await?,
        "services" => service_target(api, ns, id).await?,
        _ => node_target(api, id).await?,
    };
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let backend_path = if tail.is_empty() { "/" } else { tail };
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{backend_path}{query}"))
        .body(body)
        .map_err(|e| ApiError::bad_request(format!("invalid proxy path: {e}")))?;
    *req.headers_mut() = request_headers(&parts, client_upgrade.is_some());
    if let Ok(v) = HeaderValue::from_str(&path) {
        req.headers_mut()
            .insert(HeaderName::from_static("x-forwarded-uri"), v);
    }
    let mut resp = send(api, &target, req).await?;

    if let Some(client_upgrade) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        // The backend switched protocols: from now on bytes flow both ways untouched.
        let mut out = Response::new(Body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = resp.headers().clone();
        super::node_proxy::join_upgraded(client_upgrade, &mut resp);
        return Ok(out);
    }

    let (resp_parts, resp_body) = resp.into_parts();
    let mut out = Response::new(Body::new(resp_body));
    *out.status_mut() = resp_parts.status;
    let mut headers = resp_parts.headers;
    strip_hop_by_hop(&mut headers, false);
    // Upstream drops the backend's CORS headers: the API server's own policy applies.
    for h in [
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-allow-origin",
    ] {
        headers.remove(h);
    }
    if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let rewritten = rewrite_location(loc, prefix, &target.addr.to_string(), host);
        if let Ok(v) = HeaderValue::from_str(&rewritten) {
            headers.insert(header::LOCATION, v);
        }
    }
    *out.headers_mut() = headers;
    Ok(out)
}

/// The part of a raw path after its first `n` segments (empty segments not counted):
/// `/a//b/c/` after 2 is `/c/`.
fn raw_tail(path: &str, n: usize) -> &str {
    let bytes = path.as_bytes();
    let mut i = 0;
    for _ in 0..n {
        while i < bytes.len() && bytes[i] == b'/' {
            i += 1;
        }
        while i < bytes.len() && bytes[i] != b'/' {
            i += 1;
        }
    }
    &path[i..]
}

/// Whether the client asks to switch protocols (`Connection: Upgrade`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Headers that concern one connection only (RFC 9110 §7.6.1), as Go's reverse proxy drops.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers and those the `Connection` header names; an upgrade keeps
/// `Connection` and `Upgrade`, which the backend needs to switch protocols.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for h in named
        .iter()
        .map(String::as_str)
        .chain(HOP_BY_HOP.iter().copied())
    {
        if upgrade && matches!(h, "connection" | "upgrade") {
            continue;
        }
        headers.remove(h);
    }
}

/// The client's headers as sent on: without hop-by-hop ones, nor the credentials and
/// impersonation the API server consumed (upstream's filters delete them too), nor identity
/// headers a backend trusting the API server's certificate could read as asserted by it.
pub(crate) fn request_headers(parts: &http::request::Parts, upgrade: bool) -> HeaderMap {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::AUTHORIZATION);
    let impersonation: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("impersonate-") || k.starts_with("x-remote-")
        })
        .cloned()
        .collect();
    for k in impersonation {
        headers.remove(k);
    }
    // Upstream passes the client's Host on; an HTTP/2 client sent it as the authority.
    if !headers.contains_key(header::HOST)
        && let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, v);
    }
    headers
}

/// A redirect of the backend to itself, pointed back through the proxy (`/x` becomes
/// `<prefix>/x`), as upstream's proxy transport rewrites it. Relative locations and other
/// hosts are left alone.
fn rewrite_location(loc: &str, prefix: &str, backend: &str, client_host: &str) -> String {
    let path = if let Some((_, rest)) = loc.split_once("://") {
        let (host, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if host != backend && host != client_host {
            return loc.to_string();
        }
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        }
    } else if loc.starts_with('/') && !loc.starts_with("//") {
        loc.to_string()
    } else {
        return loc.to_string();
    };
    if path.starts_with(prefix) {
        path
    } else {
        format!("{prefix}{path}")
    }
}

/// `name`, `name:port` or `scheme:name:port`, as upstream's `SplitSchemeNamePort`.
fn split_id<'a>(kind: &str, id: &'a str) -> ApiResult<(&'a str, &'a str, &'a str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [n] => ("", *n, ""),
        [n, p] => ("", *n, *p),
        [s, n, p] => (*s, *n, *p),
        _ => ("", "", ""),
    };
    if name.is_empty() || !matches!(scheme, "" | "http" | "https") {
        return Err(ApiError::bad_request(format!(
            "invalid {kind} request {id:?}"
        )));
    }
    Ok((scheme, name, port))
}

/// An address the proxy may dial (upstream's `IsProxyableIP`: a global unicast address).
pub(crate) fn proxyable(ip: &str) -> Option<IpAddr> {
    let ip: IpAddr = ip.parse().ok()?;
    let ok = match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unicast_link_local())
                && v6.to_ipv4_mapped().is_none_or(|v4| {
                    !(v4.is_unspecified() || v4.is_loopback() || v4.is_link_local())
                })
        }
    };
    ok.then_some(ip)
}

fn not_allowed() -> ApiError {
    ApiError::bad_request("address not allowed")
}

fn unavailable(msg: impl Into<String>) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", msg)
}

async fn get(api: &Api, resource: &str, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    let res = api
        .registry
        .find("", "v1", resource)
        .ok_or_else(ApiError::path_not_found)?;
    let ctx = Ctx::internal("", "v1", resource, ns);
    Ok(get_current(api, &res, &ctx, name).await?.1)
}

/// A port given in the request, or the scheme's default port.
fn port_of(port: &str, https: bool) -> ApiResult<u16> {
    match port {
        "" if https => Ok(443),
        "" => Ok(80),
        p => p
            .parse()
            .map_err(|_| unavailable(format!("error trying to reach service: invalid port {p:?}"))),
    }
}

/// `https:` backends other than kubelets are not verified: they are addressed by IP, and
/// upstream's proxy transport skips verification too.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut config = kinglet_pki::tls::unverified_client_config().unwrap_or_else(|_| {
                rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
                    .dangerous()
                    .with_custom_certificate_verifier(kinglet_pki::tls::AnyServerCertificate::new())
                    .with_no_client_auth()
            });
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

fn target(ip: IpAddr, port: u16, https: bool) -> Target {
    Target {
        addr: SocketAddr::new(ip, port),
        tls: https.then(insecure_tls),
        kubelet_of: None,
    }
}

/// `pods/<name>/proxy`: the pod's IP, at the given port or its first declared one.
async fn pod_target(api: &Api, ns: &str, id: &str) -> ApiResult<Target> {
    let (scheme, name, port) = split_id("pod", id)?;
    let pod = get(api, "pods", Some(ns), name).await?;
    let first_port = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_u64))
        .map(|p| p.to_string())
        .unwrap_or_default();
    let port = if port.is_empty() { &first_port } else { port };
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .and_then(proxyable)
        .ok_or_else(not_allowed)?;
    let https = scheme == "https";
    Ok(target(ip, port_of(port, https)?, https))
}

/// `services/<name>/proxy`: a ready endpoint address of the named (or numbered) port, which
/// must belong to a pod of the namespace holding that IP.
async fn service_target(api: &Api, ns: &str, id: &str) -> ApiResult<Target> {
    let (scheme, name, port) = split_id("service", id)?;
    let mut port_name = port.to_string();
    if let Ok(number) = port.parse::<i64>() {
        let svc = get(api, "services", Some(ns), name).await?;
        port_name = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_i64() == Some(number))
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .ok_or_else(|| {
                unavailable(format!(
                    "no service port {number} found for service {name:?}"
                ))
            })?;
    }
    let eps = get(api, "endpoints", Some(ns), name).await?;
    let subsets: &[Value] = eps["subsets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if subsets.is_empty() {
        return Err(unavailable(format!(
            "no endpoints available for service {name:?}"
        )));
    }
    // Start at a random subset and address, spreading requests as upstream does.
    let start = rand::random_range(0..subsets.len());
    for ss in subsets.iter().cycle().skip(start).take(subsets.len()) {
        let addresses: &[Value] = ss["addresses"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if addresses.is_empty() {
            continue;
        }
        let ports = ss["ports"].as_array().into_iter().flatten();
        for p in ports.filter(|p| p["name"].as_str().unwrap_or_default() == port_name) {
            let Some(number) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let first = rand::random_range(0..addresses.len());
            for addr in addresses.iter().cycle().skip(first).take(addresses.len()) {
                if let Some(ip) = pod_address(api, ns, addr).await {
                    return Ok(target(ip, number, scheme == "https"));
                }
            }
        }
    }
    Err(unavailable(format!(
        "no endpoints available for service {id:?}"
    )))
}

/// An endpoint address that upstream would proxy to: it refers to a pod of the namespace
/// whose IPs include it (so an Endpoints object written by hand cannot point the API server
/// anywhere else), and it is proxyable.
async fn pod_address(api: &Api, ns: &str, addr: &Value) -> Option<IpAddr> {
    let ip = addr["ip"].as_str()?;
    let target = &addr["targetRef"];
    if target["namespace"].as_str() != Some(ns) {
        return None;
    }
    let pod = get(api, "pods", Some(ns), target["name"].as_str()?)
        .await
        .ok()?;
    let ips = pod.pointer("/status/podIPs").and_then(Value::as_array)?;
    if !ips.iter().any(|p| p["ip"].as_str() == Some(ip)) {
        return None;
    }
    proxyable(ip)
}

/// `nodes/<name>/proxy`: the node's kubelet (over HTTPS, with the API server's kubelet-client
/// certificate), or another port of the node's address.
async fn node_target(api: &Api, id: &str) -> ApiResult<Target> {
    let (scheme, name, port) = split_id("node", id)?;
    let node = get(api, "nodes", None, name).await?;
    let (ip, kubelet_port) = node_address(&node)?;
    let ip = proxyable(&ip).ok_or_else(not_allowed)?;
    if port.is_empty() || port == kubelet_port.to_string() {
        let Some(client) = api.kubelet_client.get() else {
            return Err(unavailable(
                "the API server has no kubelet client credentials",
            ));
        };
        return Ok(Target {
            addr: SocketAddr::new(ip, kubelet_port),
            tls: Some(client.tls.clone()),
            kubelet_of: Some(name.to_string()),
        });
    }
    let https = scheme == "https";
    Ok(target(ip, port_of(port, https)?, https))
}

/// Sends `req` to the target over a connection of its own (which allows upgrades).
async fn send(
    api: &Api,
    target: &Target,
    req: http::Request<Body>,
) -> ApiResult<http::Response<hyper::body::Incoming>> {
    let fail = |e: String| unavailable(format!("error trying to reach service: {e}"));
    let addr = target.addr;
    let dial = async {
        match &target.kubelet_of {
            Some(node) => {
                let ip = addr.ip().to_string();
                crate::node_proxy::dial_kubelet(api, node, &ip, addr.port()).await
            }
            None => tokio::net::TcpStream::connect(addr)
                .await
                .map(|tcp| Box::new(tcp) as Box<dyn crate::node_proxy::Conn>)
                .map_err(|e| e.to_string()),
        }
    };
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| fail(format!("dial tcp {addr}: i/o timeout")))?
        .map_err(|e| fail(format!("dial tcp {addr}: {e}")))?;
    let Some(tls) = &target.tls else {
        return exchange(tcp, req).await.map_err(fail);
    };
    let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    // A backend that accepts and then stalls must not hold the request (upstream: 10 s).
    let handshake = tokio_rustls::TlsConnector::from(tls.clone()).connect(server_name, tcp);
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| fail(format!("tls handshake with {addr}: timeout")))?
        .map_err(|e| fail(format!("tls handshake with {addr}: {e}")))?;
    exchange(stream, req).await.map_err(fail)
}

async fn exchange<S>(
    io: S,
    req: http::Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_and_ids() {
        let p = "/api/v1/namespaces/default/services/web:80/proxy/a//b/?x=1";
        assert_eq!(raw_tail(p, 7), "/a//b/?x=1");
        assert_eq!(raw_tail("/api/v1/nodes/n/proxy", 5), "");
        assert_eq!(raw_tail("/api/v1/nodes/n/proxy/", 5), "/");
        assert_eq!(split_id("service", "web").unwrap(), ("", "web", ""));
        assert_eq!(
            split_id("service", "https:web:443").unwrap(),
            ("https", "web", "443")
        );
        assert!(split_id("service", "ftp:web:21").is_err());
        assert!(split_id("service", ":80").is_err());
        assert!(split_id("service", "a:b:c:d").is_err());
    }

    #[test]
    fn proxyable_addresses() {
        for ip in ["10.42.0.5", "192.0.2.10", "2001:db8::1", "8.8.8.8"] {
            assert!(proxyable(ip).is_some(), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "not-an-ip",
            "",
        ] {
            assert!(proxyable(ip).is_none(), "{ip}");
        }
    }

    #[test]
    fn hop_by_hop_and_credentials_are_not_forwarded() {
        let req = http::Request::get("/x")
            .header("connection", "close, x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .header("authorization", "Bearer secret")
            .header("impersonate-user", "admin")
            .header("x-remote-group", "system:masters")
            .header("accept", "text/plain")
            .header("host", "127.0.0.1:6443")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let h = request_headers(&parts, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["accept", "host"]);
    }

    #[test]
    fn redirects_point_back_through_the_proxy() {
        let prefix = "/api/v1/namespaces/default/pods/web/proxy";
        let backend = "10.42.0.5:8080";
        let rw = |l: &str| rewrite_location(l, prefix, backend, "127.0.0.1:6443");
        assert_eq!(rw("/login?next=/"), format!("{prefix}/login?next=/"));
        assert_eq!(rw("http://10.42.0.5:8080/a/"), format!("{prefix}/a/"));
        assert_eq!(rw(&format!("{prefix}/b")), format!("{prefix}/b"));
        assert_eq!(rw("http://example.org/a"), "http://example.org/a");
        assert_eq!(rw("next"), "next");
        assert_eq!(rw("//example.org/x"), "//example.org/x");
    }
}
