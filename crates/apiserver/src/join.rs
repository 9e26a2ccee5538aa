//! Joining nodes by token, as k3s does: `/cacerts` serves the cluster CA to anyone (the agent
//! checks it against the hash in its token), and `/v1-kinglet/{client,serving}-kubelet.crt`
//! hand a node its certificates when it presents the server token's secret (HTTP basic auth)
//! and its node password. The first password seen for a node name is kept (hashed) in the
//! Secret `<node>.node-password.kinglet` in kube-system; later requests for that name must
//! present it, so a second machine cannot take over a node name. Extra join tokens are
//! upstream's bootstrap tokens (`<id>.<secret>`, Secret `bootstrap-token-<id>`), accepted as the
//! password of user `node` until their `expiration`.
//!
//! The server's own node is not joined: the server reserves its name at start with a password
//! Secret of a random password it never gives out, labelled `kinglet.io/reserved: server`
//! (`reserve_node_name`, as k3s does). A name that is the server's own node, or whose password
//! Secret is reserved, gets no certificate and no tunnel (`refuse_server_node`). A node's serving
//! certificate names nothing the API server's own serving certificate names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kinglet_pki::CertKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Api;
use crate::status::ApiError;

/// What the join endpoints need from the server's PKI and data directory.
pub struct JoinConfig {
    /// The cluster CA, which signs node certificates.
    pub ca: CertKey,
    /// `<data-dir>/server/token`, read on every request so that a rotation takes effect.
    pub token_path: PathBuf,
    /// What joining agents take instead of their own flags.
    pub cluster: ClusterSettings,
    /// The server's own node, when it runs one: no agent may take its name.
    pub server_node: Option<String>,
    /// The names and addresses of the API server's serving certificate, which a node's serving
    /// certificate may not name (pods and clients trust the same CA for both).
    pub api_server_sans: Vec<rcgen::SanType>,
}

pub use kinglet_core::join::{
    CA_PATH, CLIENT_CERT_PATH, CLUSTER_PATH, ClusterSettings, NODE_IP_HEADER, NODE_NAME_HEADER,
    NODE_PASSWORD_HEADER, SERVING_CERT_PATH,
};
pub const NODE_PASSWORD_TYPE: &str = "kinglet.io/node-password";
/// Extra join tokens are upstream's bootstrap tokens: Secrets of this type and name prefix.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "bootstrap-token-";
const NODE_PASSWORD_SUFFIX: &str = ".node-password.kinglet";
/// Marks the node-password Secret of a name the server keeps for itself.
pub const RESERVED_LABEL: &str = "kinglet.io/reserved";
const RESERVED_FOR_SERVER: &str = "server";
/// bcrypt's work factor: a node password is checked once per join, not per request.
const BCRYPT_COST: u32 = 10;

/// The server token file under a data directory.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("token")
}

/// Present while the server of a data directory shares its datastore with other servers (its
/// token then seals the cluster's bootstrap data there).
pub fn shared_datastore_marker(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("shared-datastore")
}

/// The secret in a token file: the file holds the bare secret, or a whole `K10…::server:<secret>`
/// token (as k3s's does).
fn secret_of(contents: &str) -> Option<String> {
    let t = contents.trim();
    let s = match t.split_once("::") {
        Some((_, cred)) => cred.split_once(':').map_or(cred, |(_, s)| s),
        None => t,
    };
    (!s.is_empty()).then(|| s.to_string())
}

/// Reads the server token's secret.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let contents =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    secret_of(&contents).with_context(|| format!("{} holds no token", path.display()))
}

/// Writes a new random secret to `path` (mode 0600), replacing any, and returns it.
pub fn write_new_secret(path: &Path) -> anyhow::Result<String> {
    let secret = new_secret();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    kinglet_pki::write_private(path, &format!("{secret}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

/// A new random token secret.
pub fn new_secret() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The server token's secret, made on first start.
pub fn ensure_secret(path: &Path) -> anyhow::Result<String> {
    match read_secret(path) {
        Ok(s) => Ok(s),
        Err(_) if !path.exists() => write_new_secret(path),
        Err(e) => Err(e),
    }
}

/// The join token for a CA bundle and secret: `K10<sha256 hex of the CA PEM>::server:<secret>`.
pub fn token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::server:{secret}", ca_hash(ca_pem))
}

/// The sha256 hex of a CA bundle, as join tokens carry it.
pub fn ca_hash(ca_pem: &str) -> String {
    hex(&Sha256::digest(ca_pem.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` is served here, before authentication.
pub fn is_join_path(path: &str) -> bool {
    matches!(
        path,
        CA_PATH | CLIENT_CERT_PATH | SERVING_CERT_PATH | CLUSTER_PATH
    )
}

/// Serves a join path (see `is_join_path`).
pub async fn serve(api: &Arc<Api>, path: &str, req: &http::request::Parts) -> Response {
    let Some(cfg) = api.join.get() else {
        return ApiError::path_not_found().into_response();
    };
    if req.method != http::Method::GET {
        return ApiError::method_not_allowed("only GET is allowed here").into_response();
    }
    if path == CA_PATH {
        return pem_response(cfg.ca.cert_pem.clone());
    }
    if path == CLUSTER_PATH {
        return match authenticate(api, cfg, req).await {
            Ok(()) => (
                http::StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(&cfg.cluster).unwrap_or_default(),
            )
                .into_response(),
            Err(e) => e.into_response(),
        };
    }
    match node_cert(api, cfg, path == SERVING_CERT_PATH, req).await {
        Ok(body) => pem_response(body),
        Err(e) => e.into_response(),
    }
}

fn pem_response(body: String) -> Response {
    (
        http::StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/x-pem-file")],
        body,
    )
        .into_response()
}

fn header<'a>(req: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The request's basic credentials.
fn basic_credentials(req: &http::request::Parts) -> Option<(String, String)> {
    let cred = header(req, "authorization")?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .ok()?;
    let (user, password) = String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some((user, password))
}

/// Equality of secrets in constant time, over digests of equal length so that a secret's
/// length leaks nothing.
fn same_secret(given: &str, want: &str) -> bool {
    let (g, w) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(want.as_bytes()),
    );
    g.as_slice().ct_eq(w.as_slice()).into()
}

/// Whether the password is the server token's secret (user `node` or `server`).
fn server_token_matches(user: &str, password: &str, secret: &str) -> bool {
    same_secret(password, secret) && matches!(user, "node" | "server")
}

/// A bootstrap token's id and secret (`[a-z0-9]{6}.[a-z0-9]{16}`, upstream's format).
pub fn bootstrap_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// A new random bootstrap token, `<id>.<secret>`.
pub fn new_bootstrap_token() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
            .collect()
    };
    let id = pick(6);
    format!("{id}.{}", pick(16))
}

/// Whether `token` is a bootstrap token (Secret `bootstrap-token-<id>` in kube-system) that
/// allows authentication and has not expired.
async fn bootstrap_token_valid(api: &Arc<Api>, token: &str) -> bool {
    let Some((id, secret)) = bootstrap_parts(token) else {
        return false;
    };
    let secrets: kube::Api<Secret> = kube::Api::namespaced(api.local_client(), "kube-system");
    let Ok(Some(s)) = secrets
        .get_opt(&format!("{BOOTSTRAP_TOKEN_PREFIX}{id}"))
        .await
    else {
        return false;
    };
    let field = |k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .unwrap_or_default()
    };
    let unexpired = match field("expiration").as_str() {
        "" => true,
        exp => chrono::DateTime::parse_from_rfc3339(exp).is_ok_and(|t| t > chrono::Utc::now()),
    };
    s.type_.as_deref() == Some(BOOTSTRAP_TOKEN_TYPE)
        && field("token-id") == id
        && field("usage-bootstrap-authentication") == "true"
        && unexpired
        && same_secret(secret, &field("token-secret"))
}

/// The certificate chain and key for a node (client or serving), after checking the token and
/// the node password.
/// The request carries the server token, or an extra (bootstrap) token `<id>.<secret>` as
/// user `node`.
async fn authenticate(
    api: &Arc<Api>,
    cfg: &JoinConfig,
    req: &http::request::Parts,
) -> Result<(), ApiError> {
    let secret = read_secret(&cfg.token_path).map_err(|e| {
        tracing::error!("join: {e:#}");
        ApiError::internal("the server token is unavailable")
    })?;
    let authenticated = match basic_credentials(req) {
        Some((user, password)) => {
            server_token_matches(&user, &password, &secret)
                || (user == "node" && bootstrap_token_valid(api, &password).await)
        }
        None => false,
    };
    if authenticated {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

async fn node_cert(
    api: &Arc<Api>,
    cfg: &JoinConfig,
    serving: bool,
    req: &http::request::Parts,
) -> Result<String, ApiError> {
    authenticate(api, cfg, req).await?;
    let node = header(req, NODE_NAME_HEADER)
        .ok_or_else(|| ApiError::bad_request("the Kinglet-Node-Name header is required"))?;
    // The name also names the node password Secret, so that must be valid too.
    if let Some(why) =
        kinglet_core::object::check_dns_subdomain(&format!("{node}{NODE_PASSWORD_SUFFIX}"))
    {
        return Err(ApiError::bad_request(format!(
            "invalid node name {node:?}: {why}"
        )));
    }
    let password = header(req, NODE_PASSWORD_HEADER)
        .ok_or_else(|| ApiError::bad_request("the Kinglet-Node-Password header is required"))?;
    refuse_server_node(api, node).await?;
    check_node_password(api, node, password).await?;
    let issued = if serving {
        // A serving certificate must not name the API server: pods and clients trust the
        // same CA for it.
        if names_api_server(&cfg.api_server_sans, node) {
            return Err(ApiError::bad_request(format!(
                "a node may not be named {node:?}: the name belongs to the API server"
            )));
        }
        let mut sans = vec![rcgen::SanType::DnsName(
            node.to_string()
                .try_into()
                .map_err(|_| ApiError::bad_request("invalid node name"))?,
        )];
        for ip in header(req, NODE_IP_HEADER).unwrap_or("").split(',') {
            match ip.trim().parse::<std::net::IpAddr>() {
                Ok(ip)
                    if ip.is_loopback()
                        || ip.is_unspecified()
                        || ip == api.config.advertise_address
                        || ip == std::net::IpAddr::V4(api.kubernetes_service_ip())
                        || cfg
                            .api_server_sans
                            .contains(&rcgen::SanType::IpAddress(ip)) =>
                {
                    return Err(ApiError::bad_request(format!(
                        "a node's serving certificate may not name {ip}: it belongs to the API server or to no one"
                    )));
                }
                Ok(ip) => sans.push(rcgen::SanType::IpAddress(ip)),
                Err(_) if ip.trim().is_empty() => {}
                Err(_) => return Err(ApiError::bad_request(format!("invalid node IP {ip:?}"))),
            }
        }
        kinglet_pki::issue(&cfg.ca, node, &[], &sans, true, false)
    } else {
        let user = format!("system:node:{node}");
        kinglet_pki::issue(&cfg.ca, &user, &["system:nodes"], &[], false, true)
    }
    .map_err(|e| ApiError::internal(format!("issuing the node certificate: {e:#}")))?;
    // The leaf, the CA that signed it, then the key (k3s's layout).
    Ok(format!(
        "{}{}{}",
        issued.cert_pem, cfg.ca.cert_pem, issued.key_pem
    ))
}

/// Whether a node named `name` would have a serving certificate naming an API server: this
/// one's names (`sans`), or those every API server carries (agents' tunnels check servers for
/// `kinglet_pki::API_SERVER_NAME`).
fn names_api_server(sans: &[rcgen::SanType], name: &str) -> bool {
    kinglet_pki::reserved_for_api_servers(name) || names_dns(sans, name)
}

/// bcrypt reads 72 bytes at most: it hashes the password's digest, so all of it counts.
fn prehash(password: &str) -> String {
    hex(&Sha256::digest(password.as_bytes()))
}

/// Whether the certificate SANs `sans` name the DNS name `name` (case-insensitively; a
/// `*.domain` SAN names every name one label under `domain`).
fn names_dns(sans: &[rcgen::SanType], name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    sans.iter().any(|san| {
        let rcgen::SanType::DnsName(d) = san else {
            return false;
        };
        let d = d.as_str().trim_end_matches('.').to_ascii_lowercase();
        match d.strip_prefix("*.") {
            Some(domain) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
            None => d == name,
        }
    })
}

/// A node-password Secret holding `hash`; `reserved` marks the server's own.
fn password_secret(name: &str, hash: String, reserved: bool) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("kube-system".into()),
            labels: reserved
                .then(|| [(RESERVED_LABEL.to_string(), RESERVED_FOR_SERVER.to_string())].into()),
            ..Default::default()
        },
        type_: Some(NODE_PASSWORD_TYPE.into()),
        data: Some(
            [(
                "hash".to_string(),
                k8s_openapi::ByteString(hash.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

/// Whether `secret` is a node-password Secret the server reserved for itself.
fn is_reserved(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(NODE_PASSWORD_TYPE)
        && secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(RESERVED_LABEL))
            .is_some_and(|v| v == RESERVED_FOR_SERVER)
}

/// The rule of `refuse_server_node`: `node` is the server's when it is the server's own node
/// or its password Secret is reserved.
fn server_owns(server_node: Option<&str>, password_secret: Option<&Secret>, node: &str) -> bool {
    server_node == Some(node) || password_secret.is_some_and(is_reserved)
}

/// Refuses (403) a name the server keeps for its own node: no certificate and no tunnel for it,
/// since the API server would send that node's kubelet traffic through the tunnel.
pub async fn refuse_server_node(api: &Arc<Api>, node: &str) -> Result<(), ApiError> {
    let server_node = api.join.get().and_then(|c| c.server_node.as_deref());
    let secrets: kube::Api<Secret> = kube::Api::namespaced(api.local_client(), "kube-system");
    let name = format!("{node}{NODE_PASSWORD_SUFFIX}");
    let secret = match server_node == Some(node) {
        true => None,
        false => secrets
            .get_opt(&name)
            .await
            .map_err(|e| ApiError::internal(format!("node password {name}: {e}")))?,
    };
    if server_owns(server_node, secret.as_ref(), node) {
        return Err(ApiError::forbidden(format!(
            "node {node:?} is the server's own node"
        )));
    }
    Ok(())
}

/// Keeps `node` (the server's own node) from being joined: makes its node-password Secret, of
/// a random password never written anywhere, labelled as reserved; replaces one a join made.
pub async fn reserve_node_name(api: &Arc<Api>, node: &str) -> anyhow::Result<()> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(api.local_client(), "kube-system");
    let name = format!("{node}{NODE_PASSWORD_SUFFIX}");
    let existing = secrets.get_opt(&name).await?;
    if existing.as_ref().is_some_and(is_reserved) {
        return Ok(());
    }
    let pre = prehash(&hex(&rand::random::<[u8; 32]>()));
    let hash = tokio::task::spawn_blocking(move || bcrypt::hash(pre, BCRYPT_COST)).await??;
    let mut secret = password_secret(&name, hash, true);
    match existing {
        None => {
            secrets.create(&Default::default(), &secret).await?;
        }
        Some(old) => {
            tracing::warn!(
                "node password {name}: a node joined with the server's own node name; \
                 the name is the server's again"
            );
            secret.metadata.resource_version = old.metadata.resource_version;
            secrets.replace(&name, &Default::default(), &secret).await?;
        }
    }
    Ok(())
}

/// Records the node's password the first time its name is seen; afterwards, refuses any other.
async fn check_node_password(api: &Arc<Api>, node: &str, password: &str) -> Result<(), ApiError> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(api.local_client(), "kube-system");
    let name = format!("{node}{NODE_PASSWORD_SUFFIX}");
    let internal = |e: kube::Error| ApiError::internal(format!("node password {name}: {e}"));
    let existing = match secrets.get_opt(&name).await.map_err(internal)? {
        Some(s) => s,
        None => {
            let pre = prehash(password);
            let hash = tokio::task::spawn_blocking(move || bcrypt::hash(pre, BCRYPT_COST))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let secret = password_secret(&name, hash, false);
            match secrets.create(&Default::default(), &secret).await {
                Ok(_) => return Ok(()),
                // Another request for this name won the race: check against its password.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    secrets.get(&name).await.map_err(internal)?
                }
                Err(e) => return Err(internal(e)),
            }
        }
    };
    let stored = existing
        .data
        .as_ref()
        .and_then(|d| d.get("hash"))
        .and_then(|h| String::from_utf8(h.0.clone()).ok())
        .unwrap_or_default();
    let pre = prehash(password);
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pre, &stored).unwrap_or(false))
        .await
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "node {node:?} is registered with another node password"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format_and_secret_parsing() {
        let t = token("PEM", "abc");
        let hash = hex(&Sha256::digest(b"PEM"));
        assert_eq!(t, format!("K10{hash}::server:abc"));
        assert_eq!(secret_of(&t).as_deref(), Some("abc"));
        assert_eq!(secret_of("  s3cret\n").as_deref(), Some("s3cret"));
        assert_eq!(secret_of("\n"), None);
    }

    #[test]
    fn secret_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let path = token_path(&dir);
        let a = ensure_secret(&path).unwrap();
        let b = ensure_secret(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let c = write_new_secret(&path).unwrap();
        assert_ne!(a, c);
        assert_eq!(read_secret(&path).unwrap(), c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("kinglet-join-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn basic(user: &str, pass: &str) -> http::request::Parts {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        http::Request::builder()
            .header("authorization", format!("Basic {v}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn basic_credentials_and_server_token() {
        let (u, p) = basic_credentials(&basic("node", "a:b")).unwrap();
        assert_eq!((u.as_str(), p.as_str()), ("node", "a:b"));
        assert!(server_token_matches("node", "s", "s"));
        assert!(server_token_matches("server", "s", "s"));
        assert!(!server_token_matches("node", "t", "s"));
        assert!(!server_token_matches("admin", "s", "s"));
        assert!(!server_token_matches("node", "s:", "s"));
    }

    #[test]
    fn serving_certificates_name_nothing_the_api_servers_names() {
        let sans = kinglet_pki::serving_sans(
            "gateway",
            &["192.0.2.1".parse().unwrap()],
            &["api.example.com".into(), "*.edge.example".into()],
            "10.43.0.1".parse().unwrap(),
            "cluster.local",
        );
        for name in [
            "gateway",
            "GATEWAY",
            "api.example.com",
            "api.example.com.",
            "a.edge.example",
        ] {
            assert!(names_dns(&sans, name), "{name}");
        }
        for name in [
            "edge-1",
            "gateway2",
            "example.com",
            "a.b.edge.example",
            "edge.example",
        ] {
            assert!(!names_dns(&sans, name), "{name}");
        }
        // What every API server's certificate names, whatever this server's names.
        for name in [
            kinglet_pki::API_SERVER_NAME,
            "kubernetes",
            "localhost",
            "Kubernetes.default.svc.",
        ] {
            assert!(names_api_server(&[], name), "{name}");
        }
        assert!(names_api_server(&sans, "gateway"));
        assert!(!names_api_server(&sans, "edge-1"));
        let ip = |s: &str| rcgen::SanType::IpAddress(s.parse().unwrap());
        assert!(sans.contains(&ip("192.0.2.1")));
        assert!(!sans.contains(&ip("192.0.2.7")));
    }

    #[test]
    fn the_server_keeps_its_own_node_name() {
        let joined = password_secret("edge-1.node-password.kinglet", "$2b$x".into(), false);
        let reserved = password_secret("gw.node-password.kinglet", "$2b$x".into(), true);
        assert!(!is_reserved(&joined));
        assert!(is_reserved(&reserved));
        // The label alone, on another type of Secret, reserves nothing.
        let mut other = reserved.clone();
        other.type_ = Some("Opaque".into());
        assert!(!is_reserved(&other));
        // The server's own node: refused with or without its Secret.
        assert!(server_owns(Some("gw"), None, "gw"));
        assert!(server_owns(Some("gw"), Some(&joined), "gw"));
        // A reserved name (the server restarted without its node): refused too.
        assert!(server_owns(None, Some(&reserved), "gw"));
        // Joined nodes and new names: accepted.
        assert!(!server_owns(Some("gw"), Some(&joined), "edge-1"));
        assert!(!server_owns(Some("gw"), None, "edge-2"));
        assert!(!server_owns(None, None, "gw"));
    }

    #[test]
    fn bootstrap_token_format() {
        assert_eq!(
            bootstrap_parts("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(bootstrap_parts("abcdef.0123456789ABCDEF"), None);
        assert_eq!(bootstrap_parts("abcde.0123456789abcdef"), None);
        assert_eq!(bootstrap_parts("abcdef0123456789abcdef"), None);
        let t = new_bootstrap_token();
        assert!(bootstrap_parts(&t).is_some(), "{t}");
        assert_ne!(t, new_bootstrap_token());
    }
}
