//! Who may use the kubelet API: every request is asked of the API server with a
//! SubjectAccessReview for `nodes/<subresource>` of this node, as upstream's kubelet does in
//! webhook authorization mode; answers are cached briefly (allowed 5 min, denied 30 s, as
//! upstream's defaults) so a stream of exec sessions does not ask each time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kinglet_pki::identity::{PeerUser, UserInfo};
use kube::api::{Api, PostParams};

type Key = (String, Vec<String>, &'static str, &'static str);

pub struct Authorizer {
    client: kube::Client,
    node: String,
    cache: Mutex<HashMap<Key, (bool, Instant)>>,
}

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);

/// The subresource of `nodes` a kubelet path is checked as (upstream's kubelet auth mapping).
pub fn subresource(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        "configz" => "configz",
        "healthz" => "healthz",
        "pods" => "pods",
        _ => "proxy",
    }
}

/// The verb of an HTTP method, as upstream's kubelet maps it.
pub fn verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    }
}

impl Authorizer {
    pub fn new(client: kube::Client, node: String) -> Arc<Authorizer> {
        Arc::new(Authorizer {
            client,
            node,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn allowed(&self, user: &UserInfo, verb: &'static str, sub: &'static str) -> bool {
        let key = (user.name.clone(), user.groups.clone(), verb, sub);
        if let Some((ok, at)) = super::lock(&self.cache).get(&key).copied() {
            let ttl = if ok { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return ok;
            }
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(sub.into()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let ok = match api.create(&PostParams::default(), &review).await {
            Ok(r) => r.status.is_some_and(|s| s.allowed),
            Err(e) => {
                // Not cached: the next request asks again.
                tracing::warn!("kubelet API: access review failed: {e}");
                return false;
            }
        };
        let mut cache = super::lock(&self.cache);
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(key, (ok, Instant::now()));
        ok
    }
}

/// Middleware: 401 without a client certificate, 403 when the API server says no.
pub async fn check(State(authz): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let Some(PeerUser(Some(user))) = req.extensions().get::<PeerUser>().cloned() else {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    };
    let (verb, sub) = (verb(req.method()), subresource(req.uri().path()));
    if !authz.allowed(&user, verb, sub).await {
        let msg = format!(
            "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
            user.name
        );
        return (StatusCode::FORBIDDEN, msg).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_node_subresources_as_upstream() {
        assert_eq!(subresource("/stats/summary"), "stats");
        assert_eq!(subresource("/metrics/cadvisor"), "metrics");
        assert_eq!(subresource("/logs/syslog"), "log");
        assert_eq!(subresource("/containerLogs/ns/p/c"), "proxy");
        assert_eq!(subresource("/exec/ns/p/c"), "proxy");
        assert_eq!(verb(&http::Method::POST), "create");
        assert_eq!(verb(&http::Method::GET), "get");
    }
}
