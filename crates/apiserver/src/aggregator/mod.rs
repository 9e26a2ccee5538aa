//! The aggregation layer: API groups that an `apiregistration.k8s.io/v1` APIService delegates
//! to a Service are proxied there (after authentication and authorization here), with the
//! caller's identity in upstream's request headers. The controller keeps the APIServices'
//! `Available` condition, the local APIServices of what this server serves, and the cached
//! discovery documents of the delegated group/versions that discovery merges in.

mod backend;
mod controller;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::Value;

use super::Api;
use super::auth::UserInfo;
use super::request::ApiPath;
use crate::service_backend::{self, ServiceRef};

pub use controller::spawn;

/// The front proxy's credentials: TLS presenting its certificate, and the CA aggregated
/// servers are told to trust for it (set once the PKI is loaded).
pub struct FrontProxy {
    pub tls: Arc<rustls::ClientConfig>,
    pub ca_pem: String,
}

/// A group/version an APIService delegates to a Service.
#[derive(Clone)]
pub struct Delegated {
    pub name: String,
    pub group: String,
    pub version: String,
    pub group_priority: i64,
    pub version_priority: i64,
    service: ServiceRef,
    available: bool,
    /// The TLS settings, or why they could not be built (answered to requests).
    tls: Result<Arc<rustls::ClientConfig>, String>,
}

/// What the controller learnt, read on every request (an API server's `aggregation`).
#[derive(Default)]
pub(crate) struct State {
    delegated: RwLock<Vec<Delegated>>,
    /// `(group, version)` -> the backend's APIResourceList, from the last successful check.
    discovery: RwLock<HashMap<(String, String), Value>>,
}

/// `spec.service` of an APIService: None for a local one.
fn service_ref(apiservice: &Value) -> Option<ServiceRef> {
    ServiceRef::of(apiservice.pointer("/spec/service")?)
}

fn state(api: &Api) -> &State {
    &api.aggregation
}

/// The delegated group/versions, highest priority first.
pub fn delegated(api: &Api) -> Vec<Delegated> {
    let mut all = state(api)
        .delegated
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    all.sort_by(|a, b| {
        (b.group_priority, &a.group, b.version_priority, &a.version).cmp(&(
            a.group_priority,
            &b.group,
            a.version_priority,
            &b.version,
        ))
    });
    all
}

/// The backend's resource list for a delegated group/version, if it has answered.
pub fn discovery_of(api: &Api, group: &str, version: &str) -> Option<Value> {
    state(api)
        .discovery
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(group.to_string(), version.to_string()))
        .cloned()
}

/// Where a delegated group/version is served.
pub struct Target(Delegated);

/// The delegated target of a request's path, if an APIService other than a local one serves it.
pub fn target(api: &Api, path: Option<&ApiPath>) -> Option<Target> {
    let (group, version) = match path? {
        ApiPath::GroupVersion(g, v) => (g, v),
        ApiPath::Resource(r) => (&r.group, &r.version),
        _ => return None,
    };
    if group.is_empty() {
        return None;
    }
    state(api)
        .delegated
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|d| &d.group == group && &d.version == version)
        .cloned()
        .map(Target)
}

/// Upstream's `http.Error` answer: plain text.
fn plain_error(code: StatusCode, message: &str) -> Response {
    (
        code,
        [
            (http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

/// Sets the authenticated user as upstream's front proxy does (`X-Remote-User`,
/// `X-Remote-Group`, `X-Remote-Extra-<key>`), replacing whatever the client sent.
fn set_identity(headers: &mut http::HeaderMap, user: &UserInfo) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("x-remote-") || k.starts_with("impersonate-") || k == "authorization"
        })
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
    let mut add = |name: String, value: &str| {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    };
    add("X-Remote-User".into(), &user.name);
    for g in &user.groups {
        add("X-Remote-Group".into(), g);
    }
    for (k, vs) in &user.extra {
        for v in vs {
            add(format!("X-Remote-Extra-{}", escape_extra_key(k)), v);
        }
    }
}

/// Extra keys are percent-encoded in header names (upstream's `headerKeyEscape`).
fn escape_extra_key(k: &str) -> String {
    k.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'!'
            | b'#'
            | b'$'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Proxies a request to its APIService's server and streams the answer back; upgrades are
/// spliced.
pub async fn proxy(
    api: &Arc<Api>,
    target: Target,
    user: &UserInfo,
    mut parts: http::request::Parts,
    body: Body,
) -> Response {
    let d = target.0;
    if !d.available {
        return plain_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    let tls = match &d.tls {
        Ok(t) => t.clone(),
        Err(e) => return plain_error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let addrs = match service_backend::resolve(api, &d.service).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(
                "APIService {}: error resolving {}/{}: {}",
                d.name,
                d.service.namespace,
                d.service.name,
                e.message
            );
            return plain_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
        }
    };
    let (addr, mut sender) =
        match service_backend::connect(&tls, &d.service.server_name(), &addrs).await {
            Ok(c) => c,
            Err(e) => {
                return plain_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("error trying to reach service: {e}"),
                );
            }
        };
    let upgrade = super::proxy::is_upgrade(&parts.headers);
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut headers = super::proxy::request_headers(&parts, upgrade);
    set_identity(&mut headers, user);
    if let Ok(host) = http::HeaderValue::from_str(&addr.to_string()) {
        headers.insert(http::header::HOST, host);
    }
    let mut req = http::Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = match path_and_query.parse() {
        Ok(u) => u,
        Err(_) => return plain_error(StatusCode::BAD_REQUEST, "invalid request path"),
    };
    *req.headers_mut() = headers;
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return plain_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("error trying to reach service: {e}"),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return plain_error(StatusCode::BAD_GATEWAY, "backend upgraded a plain request");
        };
        super::node_proxy::join_upgraded(client_upgrade, &mut resp);
        let mut out = Response::new(Body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = resp.headers().clone();
        return out;
    }
    let (rparts, rbody) = resp.into_parts();
    let mut out = Response::new(Body::new(rbody));
    *out.status_mut() = rparts.status;
    *out.headers_mut() = rparts.headers;
    super::proxy::strip_hop_by_hop(out.headers_mut(), false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_replace_the_clients() {
        let mut h = http::HeaderMap::new();
        h.insert("x-remote-user", "mallory".parse().unwrap());
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("impersonate-user", "root".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        let mut user = UserInfo {
            name: "alice".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            ..Default::default()
        };
        user.extra
            .insert("scopes.example/x y".into(), vec!["a".into()]);
        set_identity(&mut h, &user);
        let all =
            |n: &str| -> Vec<&str> { h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-remote-user"), ["alice"]);
        assert_eq!(all("x-remote-group"), ["dev", "system:authenticated"]);
        assert_eq!(all("x-remote-extra-scopes.example%2Fx%20y"), ["a"]);
        assert!(h.get("authorization").is_none());
        assert!(h.get("impersonate-user").is_none());
        assert_eq!(all("accept"), ["application/json"]);
    }
}
