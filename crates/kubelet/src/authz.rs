//! Who may use the kubelet API: every request is asked of the API server with a
//! SubjectAccessReview for `nodes/<subresource>` of this node, as upstream's kubelet does in
//! webhook authorization mode; answers are cached briefly (allowed 5 min, denied 30 s, as
//! upstream's defaults) so a stream of exec sessions does not ask each time.
//!
//! Paths with a fine-grained subresource of their own (`/pods`, `/healthz`, `/configz`) are
//! asked first as that, then as `nodes/proxy`: upstream's KubeletFineGrainedAuthz (beta and on
//! by default since 1.33), which lets a monitor read `/pods` without the power to exec.

use std::collections::HashMap;
use std::future::Future;
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

/// Whether `path` is `prefix` or below it (upstream's `isSubpath`: `/statsfoo` is not under
/// `/stats`).
fn is_subpath(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The subresources of `nodes` a kubelet path is checked as, in the order asked; the request
/// passes if any is allowed (upstream 1.33's `GetRequestAttributes` with
/// KubeletFineGrainedAuthz on). Everything without a subresource of its own, exec and logs of
/// containers included, is `proxy`.
pub fn subresources(path: &str) -> &'static [&'static str] {
    const PATHS: &[(&str, &[&str])] = &[
        ("/stats", &["stats"]),
        ("/metrics", &["metrics"]),
        // "log" as the API's other log subresources (pods/log).
        ("/logs", &["log"]),
        ("/checkpoint", &["checkpoint"]),
        ("/pods", &["pods", "proxy"]),
        ("/runningpods", &["pods", "proxy"]),
        ("/healthz", &["healthz", "proxy"]),
        ("/configz", &["configz", "proxy"]),
    ];
    PATHS
        .iter()
        .find(|(prefix, _)| is_subpath(path, prefix))
        .map_or(&["proxy"], |(_, subs)| subs)
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

/// Asks `ask` about each of `subresources` in turn: allowed at the first yes, denied when all
/// say no. An error ends the asking (upstream answers it with a 500, not with the next
/// subresource).
pub async fn decide<E, F, Fut>(subresources: &[&'static str], mut ask: F) -> Result<bool, E>
where
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    for sub in subresources {
        if ask(sub).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Authorizer {
    pub fn new(client: kube::Client, node: String) -> Arc<Authorizer> {
        Arc::new(Authorizer {
            client,
            node,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// One SubjectAccessReview for `verb` on `nodes/<sub>` of this node, cached.
    async fn allowed(
        &self,
        user: &UserInfo,
        verb: &'static str,
        sub: &'static str,
    ) -> Result<bool, kube::Error> {
        let key = (user.name.clone(), user.groups.clone(), verb, sub);
        if let Some((ok, at)) = super::lock(&self.cache).get(&key).copied() {
            let ttl = if ok { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return Ok(ok);
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
        // An error is not cached: the next request asks again.
        let review = api.create(&PostParams::default(), &review).await?;
        let ok = review.status.is_some_and(|s| s.allowed);
        let mut cache = super::lock(&self.cache);
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(key, (ok, Instant::now()));
        Ok(ok)
    }
}

/// Middleware: 401 without a client certificate, 403 when the API server says no to every
/// subresource of the path, 500 when it cannot be asked.
pub async fn check(State(authz): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let Some(PeerUser(Some(user))) = req.extensions().get::<PeerUser>().cloned() else {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    };
    let (verb, subs) = (verb(req.method()), subresources(req.uri().path()));
    let (authz, asker) = (&*authz, &user);
    let attrs = || {
        format!(
            "user={}, verb={verb}, resource=nodes, subresource(s)=[{}]",
            user.name,
            subs.join(" ")
        )
    };
    match decide(subs, |sub| authz.allowed(asker, verb, sub)).await {
        Ok(true) => next.run(req).await,
        Ok(false) => (StatusCode::FORBIDDEN, format!("Forbidden ({})", attrs())).into_response(),
        Err(e) => {
            tracing::warn!("kubelet API: access review failed: {e}");
            let msg = format!("Authorization error ({})", attrs());
            (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_node_subresources_as_upstream() {
        let cases: &[(&str, &[&str])] = &[
            ("/stats/summary", &["stats"]),
            ("/stats", &["stats"]),
            ("/metrics/cadvisor", &["metrics"]),
            ("/metrics", &["metrics"]),
            ("/logs/syslog", &["log"]),
            ("/checkpoint/ns/p/c", &["checkpoint"]),
            ("/pods", &["pods", "proxy"]),
            ("/runningpods/", &["pods", "proxy"]),
            ("/healthz", &["healthz", "proxy"]),
            ("/healthz/syncloop", &["healthz", "proxy"]),
            ("/configz", &["configz", "proxy"]),
            // Upstream's code has no `spec` case (its docs' table does): proxy.
            ("/spec/", &["proxy"]),
            ("/containerLogs/ns/p/c", &["proxy"]),
            ("/exec/ns/p/c", &["proxy"]),
            ("/attach/ns/p/c", &["proxy"]),
            ("/portForward/ns/p", &["proxy"]),
            ("/run/ns/p/c", &["proxy"]),
            // A prefix of a name is not its path.
            ("/statsx", &["proxy"]),
            ("/podsx", &["proxy"]),
            ("/healthzx", &["proxy"]),
            ("/", &["proxy"]),
        ];
        for (path, want) in cases {
            assert_eq!(subresources(path), *want, "{path}");
        }
        assert_eq!(verb(&http::Method::POST), "create");
        assert_eq!(verb(&http::Method::GET), "get");
        assert_eq!(verb(&http::Method::DELETE), "delete");
    }

    /// `decide` with an API server that allows `granted`, failing on `broken`; returns the
    /// answer and the subresources asked, in order.
    async fn ask_with(
        path: &str,
        granted: &[&str],
        broken: Option<&str>,
    ) -> (Result<bool, String>, Vec<&'static str>) {
        let asked = Mutex::new(Vec::new());
        let answer = decide(subresources(path), |sub| {
            asked.lock().unwrap().push(sub);
            let r = match broken {
                Some(b) if b == sub => Err(format!("{sub}: unreachable")),
                _ => Ok(granted.contains(&sub)),
            };
            async move { r }
        })
        .await;
        (answer, asked.into_inner().unwrap())
    }

    #[tokio::test]
    async fn fine_grained_paths_fall_back_to_proxy() {
        // Allowed as itself: proxy is never asked.
        let (r, asked) = ask_with("/healthz", &["healthz"], None).await;
        assert_eq!((r, asked), (Ok(true), vec!["healthz"]));
        // Denied as itself, allowed through proxy (kube-apiserver-kubelet-client's case).
        let (r, asked) = ask_with("/pods", &["proxy"], None).await;
        assert_eq!((r, asked), (Ok(true), vec!["pods", "proxy"]));
        let (r, asked) = ask_with("/configz", &[], None).await;
        assert_eq!((r, asked), (Ok(false), vec!["configz", "proxy"]));
        // Paths with a subresource of their own have no fallback.
        let (r, asked) = ask_with("/stats/summary", &["proxy"], None).await;
        assert_eq!((r, asked), (Ok(false), vec!["stats"]));
        let (r, asked) = ask_with("/exec/ns/p/c", &["pods", "healthz"], None).await;
        assert_eq!((r, asked), (Ok(false), vec!["proxy"]));
        // An error is the answer: proxy is not asked after it.
        let (r, asked) = ask_with("/pods", &["proxy"], Some("pods")).await;
        assert_eq!(
            (r, asked),
            (Err("pods: unreachable".to_string()), vec!["pods"])
        );
    }
}
