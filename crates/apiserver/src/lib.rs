//! The API server: HTTPS (mutual TLS or bearer tokens), one router for every path, and the
//! resource registry behind it. In-process components reach the same router without TCP.

mod admission;
mod aggregator;
mod alloc;
pub use alloc::repair_forever as repair_service_allocations;
pub mod auth;
pub mod authz;
mod bootstrap;
pub use bootstrap::withdraw_endpoints;
mod cache;
pub mod context;
mod convert;
pub mod crd;
mod discovery;
pub mod encryption;
pub mod handlers;
pub mod join;
mod kinds;
pub mod layout;
pub mod lifecycle;
mod list;
#[rustfmt::skip]
mod list_types;
mod managed;
mod merge;
mod metrics;
pub mod node_proxy;
mod omit;
mod openapi;
mod openapi_v2;
mod patch;
mod protobuf;
mod proxy;
mod resource_metrics;
#[rustfmt::skip]
mod protobuf_tables;
pub mod registry;
pub mod request;
mod scale;
mod service_backend;
mod special;
pub mod status;
mod table;
pub mod tunnel;
mod watch;

#[cfg(test)]
mod prop_tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use self::auth::{Authenticator, TokenSigner, UserInfo};
use self::context::{Ctx, MAX_BODY};
use self::request::{ApiPath, Query};
use self::status::ApiError;

pub use kinglet_core::{object, selectors};

/// Network settings the API server needs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub advertise_address: IpAddr,
    pub port: u16,
    pub service_cidr: String,
    pub cluster_domain: String,
    /// The cluster DNS service address (`kube-system/kube-dns`).
    pub cluster_dns: std::net::IpAddr,
    pub node_port_range: (u16, u16),
}

impl ApiConfig {
    pub fn advertise_endpoint(&self) -> String {
        SocketAddr::new(self.advertise_address, self.port).to_string()
    }
}

pub struct Api {
    /// The datastore, with Secrets encrypted at rest when so configured.
    pub store: encryption::Storage,
    pub registry: registry::Registry,
    pub config: ApiConfig,
    pub auth: Authenticator,
    pub authz: authz::Authorizer,
    metrics: metrics::Metrics,
    openapi: openapi::Cache,
    openapi_v2: openapi_v2::Cache,
    /// ClusterIP and NodePort reservations, in the store.
    allocations: alloc::Allocations,
    /// How to reach kubelets (set once the PKI is loaded).
    pub kubelet_client: std::sync::OnceLock<node_proxy::KubeletClient>,
    /// The aggregation layer's client identity (set once the PKI is loaded).
    pub front_proxy: std::sync::OnceLock<FrontProxy>,
    /// The join endpoints' CA and token (set once the PKI is loaded).
    pub join: std::sync::OnceLock<join::JoinConfig>,
    /// Agents' tunnels, through which their kubelets are reached.
    pub tunnels: Arc<tunnel::Tunnels>,
    /// The admission webhooks configured, cached.
    webhooks: admission::webhook::CacheSlot,
    /// The group/versions APIServices delegate, and their backends' discovery.
    aggregation: aggregator::State,
    /// Objects and recent changes, fed by the store's watch: lists and watches read here.
    watch_cache: Arc<cache::Cache>,
}

pub use aggregator::FrontProxy;
pub use kinglet_pki::identity::PeerUser;

impl Api {
    pub async fn new(
        store: impl Into<encryption::Storage>,
        config: ApiConfig,
        sa_key_pem: &str,
    ) -> anyhow::Result<Arc<Api>> {
        let store = store.into();
        layout::migrate(&store).await?;
        let issuer = format!("https://kubernetes.default.svc.{}", config.cluster_domain);
        let signer = Arc::new(TokenSigner::new(sa_key_pem, issuer.clone())?);
        let registry = registry::Registry::new();
        let mut services = Vec::new();
        if let Some(svc) = registry.find("", "v1", "services") {
            for rec in store.list(&svc.prefix(), 0, None, None).await?.items {
                if let Ok(v) = serde_json::from_slice::<Value>(&rec.value) {
                    services.push(v);
                }
            }
        }
        let allocations = alloc::Allocations::start(
            store.raw().clone(),
            &config.service_cidr,
            config.node_port_range,
            &services,
        )
        .await?;
        let watch_cache = cache::Cache::start(store.clone());
        let api = Arc::new(Api {
            store,
            registry,
            config,
            auth: Authenticator::new(signer, vec![issuer]),
            authz: authz::Authorizer::default(),
            metrics: metrics::Metrics::new(),
            openapi: openapi::Cache::default(),
            openapi_v2: openapi_v2::Cache::default(),
            allocations,
            kubelet_client: std::sync::OnceLock::new(),
            front_proxy: std::sync::OnceLock::new(),
            join: std::sync::OnceLock::new(),
            tunnels: Default::default(),
            webhooks: Default::default(),
            aggregation: Default::default(),
            watch_cache,
        });
        crd::sync(&api).await?;
        bootstrap::run(&api).await?;
        bootstrap::spawn_endpoint_reconciler(api.clone());
        authz::start(&api).await?;
        crd::spawn_watcher(api.clone());
        aggregator::spawn(api.clone());
        Ok(api)
    }

    pub(crate) fn allocations(&self) -> &alloc::Allocations {
        &self.allocations
    }

    /// The first service IP (the `kubernetes` Service).
    pub fn kubernetes_service_ip(&self) -> std::net::Ipv4Addr {
        self.allocations.first_ip()
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }
}

fn plain(code: StatusCode, body: &'static str) -> Response {
    (
        code,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json_body(code: u16, content_type: &str, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        [(http::header::CONTENT_TYPE, content_type.to_string())],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": kinglet_core::K8S_GIT_VERSION,
        "gitCommit": option_env!("KINGLET_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("KINGLET_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": format!("linux/{}", kinglet_core::go_arch()),
    })
}

async fn authenticate(api: &Api, req: &http::request::Parts) -> Result<Arc<UserInfo>, ApiError> {
    if let Some(auth) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        && let Some(token) = auth
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
    {
        if let Some(user) = api.auth.cached(token) {
            return Ok(user);
        }
        let generation = api.auth.generation();
        return match api.authenticate_token(token, &api.auth.api_audiences).await {
            Some((user, claims)) => {
                let user = Arc::new(user);
                api.auth
                    .remember(token, user.clone(), claims.exp, generation);
                Ok(user)
            }
            None => Err(ApiError::unauthorized()),
        };
    }
    match req.extensions.get::<PeerUser>() {
        Some(PeerUser(Some(u))) => Ok(u.clone()),
        _ => Ok(Arc::new(UserInfo::anonymous())),
    }
}

fn verb_of(method: &Method, path: &ApiPath, query: &Query) -> &'static str {
    let named = matches!(path, ApiPath::Resource(r) if r.name.is_some());
    match *method {
        Method::GET if query.flag("watch") && query.get("watch") != Some("false") => "WATCH",
        Method::GET if named => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

fn header(req: &http::request::Parts, name: http::HeaderName) -> String {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The one handler behind every path.
async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    let started = Instant::now();
    let (req, body) = req.into_parts();
    let path = req.uri.path().to_string();
    let query = Query::parse(req.uri.query());
    let method = req.method.clone();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" | "/healthz/ping" | "/livez/ping" | "/readyz/ping" => {
            return plain(StatusCode::OK, "ok");
        }
        "/version" | "/version/" => return json_body(200, "application/json", &version_info()),
        // Joining nodes authenticate with the join token, not as API users.
        p if join::is_join_path(p) => return join::serve(&api, p, &req).await,
        _ => {}
    }
    let user = match authenticate(&api, &req).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // An agent's tunnel takes the connection's own identity, never an impersonated one.
    if path == tunnel::CONNECT_PATH {
        return tunnel::serve(&api, &user, req).await;
    }
    let user = match authz::impersonate(&api, user, &req.headers).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let api_path = request::parse_path(&path);
    let attrs = authz::attributes(&user, &method, &path, api_path.as_ref(), &query);
    if let authz::Decision::Deny(reason) = api.authz.authorize(&api, &attrs).await {
        return authz::forbidden(&attrs, &reason).into_response();
    }
    let (accept, content_type, user_agent) = (
        header(&req, http::header::ACCEPT),
        header(&req, http::header::CONTENT_TYPE),
        header(&req, http::header::USER_AGENT),
    );
    let verb = api_path
        .as_ref()
        .map(|p| verb_of(&method, p, &query))
        .unwrap_or("GET");
    let resource_label = match &api_path {
        Some(ApiPath::Resource(r)) => r.resource.clone(),
        _ => String::new(),
    };
    // Requests for a group/version that an APIService delegates go to its server, unbuffered.
    if let Some(target) = aggregator::target(&api, api_path.as_ref()) {
        let resp = aggregator::proxy(&api, target, &user, req, body).await;
        api.metrics.observe(
            verb,
            &resource_label,
            resp.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        return resp;
    }
    // Streams (exec, attach, port-forward, proxy) are spliced to the node, never buffered.
    if let Some(ApiPath::Resource(r)) = &api_path
        && node_proxy::is_spliced(r)
    {
        let resp = node_proxy::splice(&api, r, query, req, body)
            .await
            .unwrap_or_else(|e| e.into_response());
        api.metrics.observe(
            verb,
            &resource_label,
            resp.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        return resp;
    }
    let body = match axum::body::to_bytes(body, MAX_BODY + 1).await {
        Ok(b) if b.len() > MAX_BODY => return ApiError::too_large().into_response(),
        Ok(b) => b,
        Err(_) => return ApiError::too_large().into_response(),
    };
    let resp = match api_path {
        Some(ApiPath::Resource(path)) => {
            let ctx = Ctx {
                user,
                query,
                accept,
                content_type,
                user_agent,
                path,
                warnings: Mutex::new(Vec::new()),
            };
            resource(&api, ctx, method, body).await
        }
        Some(discovery) => discovery_document(&api, discovery, &accept),
        None if method != Method::GET => ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )
        .into_response(),
        None => non_resource(&api, &path, &query, &accept).await,
    };
    api.metrics.observe(
        verb,
        &resource_label,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// `/metrics` and the OpenAPI documents.
async fn non_resource(api: &Api, path: &str, query: &Query, accept: &str) -> Response {
    match path {
        "/metrics" => {
            let mut objects = Vec::new();
            for r in api
                .registry
                .all()
                .iter()
                .filter(|r| !r.create_only && !r.computed && r.storage.0 == r.group)
            {
                if let Ok(n) = api.store.count(&r.prefix()).await {
                    objects.push((r.plural.clone(), n));
                }
            }
            let text = api
                .metrics
                .render(api.store.db_size(), api.store.current_rev(), &objects);
            (
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                text,
            )
                .into_response()
        }
        "/openapi/v3" | "/openapi/v3/" => json_body(200, "application/json", &openapi::index(api)),
        "/openapi/v2" => {
            if accept.contains("protobuf") {
                let body = openapi_v2::document(api);
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/octet-stream")
                    .body(Body::from(body.as_ref().clone()))
                    .unwrap_or_default()
            } else {
                json_body(200, "application/json", &openapi_v2::json_document(api))
            }
        }
        p if p.starts_with("/openapi/v3/") => {
            let gv = p.trim_start_matches("/openapi/v3/").trim_end_matches('/');
            match openapi::document(api, gv) {
                None => ApiError::path_not_found().into_response(),
                Some(doc) => match query.get("hash") {
                    Some(h) if h != doc.hash => Response::builder()
                        .status(StatusCode::MOVED_PERMANENTLY)
                        .header(
                            http::header::LOCATION,
                            format!("/openapi/v3/{gv}?hash={}", doc.hash),
                        )
                        .body(Body::empty())
                        .unwrap_or_default(),
                    h => {
                        let cache = if h.is_some() {
                            "public, immutable"
                        } else {
                            "no-cache, private"
                        };
                        Response::builder()
                            .status(StatusCode::OK)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .header(http::header::CACHE_CONTROL, cache)
                            .header(http::header::ETAG, format!("\"{}\"", doc.hash))
                            .body(Body::from(doc.body.as_ref().clone()))
                            .unwrap_or_default()
                    }
                },
            }
        }
        _ => ApiError::path_not_found().into_response(),
    }
}

/// The discovery documents (`/api`, `/apis`, `/apis/<group>[/<version>]`, `/api/v1`).
fn discovery_document(api: &Api, path: ApiPath, accept: &str) -> Response {
    match path {
        ApiPath::CoreVersions => match discovery::aggregated_accept(accept) {
            Some(ct) => json_body(200, ct, &discovery::aggregated(api, true, ct)),
            None => json_body(200, "application/json", &discovery::api_versions(api)),
        },
        ApiPath::Groups => match discovery::aggregated_accept(accept) {
            Some(ct) => json_body(200, ct, &discovery::aggregated(api, false, ct)),
            None => json_body(200, "application/json", &discovery::api_group_list(api)),
        },
        ApiPath::Group(g) => match discovery::api_group(api, &g) {
            Some(v) => json_body(200, "application/json", &v),
            None => ApiError::path_not_found().into_response(),
        },
        ApiPath::GroupVersion(g, v) => match discovery::resource_list(api, &g, &v) {
            Some(doc) => json_body(200, "application/json", &doc),
            None => ApiError::path_not_found().into_response(),
        },
        ApiPath::Resource(_) => ApiError::path_not_found().into_response(),
    }
}

/// A resource path: its verbs through the handlers, or the metrics API's computed resources.
async fn resource(api: &Arc<Api>, ctx: Ctx, method: Method, body: Bytes) -> Response {
    let rp = &ctx.path;
    let Some(res) = api.registry.find(&rp.group, &rp.version, &rp.resource) else {
        return ApiError::path_not_found().into_response();
    };
    if res.computed {
        return resource_metrics::serve(api, &res, rp, &ctx.query, &method)
            .await
            .unwrap_or_else(|e| e.into_response());
    }
    match handlers::serve(api.clone(), res, ctx, method, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The first address of the service range (the `kubernetes` Service's ClusterIP).
pub fn service_network(cidr: &str) -> anyhow::Result<IpAddr> {
    Ok(IpAddr::V4(alloc::Allocator::new(cidr, (1, 1))?.first_ip()))
}

impl Api {
    /// A kube-rs client that calls this API server in-process (no TCP, no TLS), with the
    /// server's own identity.
    pub fn local_client(self: &Arc<Self>) -> kube::Client {
        self.local_client_as(UserInfo::internal(), "kube-apiserver")
    }

    /// A kube-rs client that calls this API server in-process as `user` (a node, a component),
    /// introducing itself as `program` (upstream's component name, `kube-scheduler`): its
    /// User-Agent, from which writes take their field manager as upstream's components' do.
    pub fn local_client_as(self: &Arc<Self>, user: UserInfo, program: &str) -> kube::Client {
        let router = self.router();
        let internal = PeerUser(Some(Arc::new(user)));
        let agent = http::HeaderValue::from_str(&user_agent(program))
            .unwrap_or_else(|_| http::HeaderValue::from_static("kinglet"));
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(internal.clone());
            req.headers_mut()
                .insert(http::header::USER_AGENT, agent.clone());
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        kube::Client::new(service, "default")
    }
}

pub use kinglet_core::user_agent;

/// An API server over a fresh store in `dir`, for unit tests of its clients.
#[cfg(any(test, feature = "test-util"))]
pub async fn test_api(dir: &std::path::Path) -> Arc<Api> {
    let store = kinglet_store::Store::open(&dir.join("db")).unwrap();
    let config = ApiConfig {
        advertise_address: "127.0.0.1".parse().unwrap(),
        port: 6443,
        service_cidr: "10.43.0.0/16".into(),
        cluster_domain: "cluster.local".into(),
        cluster_dns: "10.43.0.10".parse().unwrap(),
        node_port_range: (30000, 32767),
    };
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    Api::new(store, config, &key).await.unwrap()
}
