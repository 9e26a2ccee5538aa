//! The kubelet API (HTTPS, port 10250): only peers with a certificate from the cluster CA get
//! in, and each request must pass the API server's SubjectAccessReview (`authz`). Serves
//! `/healthz`, `/containerLogs/<ns>/<pod>/<container>`, and the streaming `/exec`, `/attach`
//! and `/portForward` sessions. The same API, with the same TLS, is also served on the Unix
//! socket `<run-dir>/kubelet.sock`, where an agent's tunnel to the server brings the server's
//! connections when it cannot reach port 10250.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Kubelet;
use super::containers::Record;
use super::streaming;

/// The kubelet API's socket under the run directory (the agent's tunnel dials it).
pub const SOCKET: &str = "kubelet.sock";

pub async fn serve(kubelet: Arc<Kubelet>, serving: super::Serving) -> anyhow::Result<()> {
    let tls = Arc::new(kinglet_pki::tls::server_config_for(
        &serving.ca_pem,
        &serving.cert,
        true,
    )?);
    let socket = kubelet.cfg.run_dir.join(SOCKET);
    let addr = std::net::SocketAddr::new(kubelet.cfg.node_ip, kubelet.cfg.kubelet_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("kubelet API on {addr}: {e}"))?;
    tracing::info!(%addr, "kubelet API listening");
    let authz =
        super::authz::Authorizer::new(kubelet.client.clone(), kubelet.cfg.node_name.clone());
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats/summary", get(summary).post(summary))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .with_state(kubelet)
        .layer(axum::middleware::from_fn_with_state(
            authz,
            super::authz::check,
        ));
    // Without the socket the API still serves TCP; only tunnelled requests fail.
    match bind_private(&socket) {
        Ok(unix) => {
            tracing::info!(socket = %socket.display(), "kubelet API listening");
            let (tls, router) = (tls.clone(), router.clone());
            tokio::spawn(async move {
                if let Err(e) = kinglet_pki::tls::serve_unix(unix, tls, router).await {
                    tracing::error!("kubelet API socket: {e:#}");
                }
            });
        }
        Err(e) => tracing::warn!("kubelet API socket {}: {e:#}", socket.display()),
    }
    kinglet_pki::tls::serve(listener, tls, router).await
}

/// A Unix socket at `path` that only root may connect to, replacing a stale one (a socket
/// left by an earlier run; any other kind of file is refused).
fn bind_private(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => anyhow::bail!("exists and is not a socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// Attempts of one container of a pod, oldest first.
fn attempts(k: &Kubelet, ns: &str, pod: &str, container: &str) -> Vec<Record> {
    let mut v: Vec<Record> = k
        .runtime
        .list()
        .into_iter()
        .filter_map(|dir| {
            let meta = dir.meta().ok()?;
            (meta.pod_namespace == ns && meta.pod_name == pod && meta.container_name == container)
                .then(|| Record {
                    status: dir.status(),
                    supervised: dir.supervised(),
                    meta,
                })
        })
        .collect();
    v.sort_by(|a, b| {
        (a.meta.attempt, &a.meta.created_at).cmp(&(b.meta.attempt, &b.meta.created_at))
    });
    v
}

async fn container_logs(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let flag = |name: &str| q.get(name).is_some_and(|v| v == "true" || v == "1");
    let history = attempts(&k, &ns, &pod, &container);
    let record = if flag("previous") {
        match history.len().checked_sub(2).map(|i| history[i].clone()) {
            Some(r) => r,
            None => {
                return bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                ));
            }
        }
    } else {
        match history.last() {
            Some(r) => r.clone(),
            None => {
                return bad_request(format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                ));
            }
        }
    };
    let since = q
        .get("sinceTime")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            q.get("sinceSeconds")
                .and_then(|s| s.parse::<i64>().ok())
                .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
        });
    let opts = super::logs::Options {
        follow: flag("follow"),
        since,
        tail: q.get("tailLines").and_then(|t| t.parse().ok()),
        timestamps: flag("timestamps"),
        limit_bytes: q.get("limitBytes").and_then(|t| t.parse().ok()),
        stream: None,
    };
    let log = record.meta.log_path.clone();
    let headers = [(axum::http::header::CONTENT_TYPE, "text/plain")];
    if !opts.follow || !record.running() {
        return (headers, super::logs::read_all(&log, &opts)).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let dir = k.runtime.dir(&record.meta.id);
    tokio::spawn(super::logs::follow(log, opts, tx, move || {
        !super::containers::is_running(&dir)
    }));
    let stream = tokio_stream_from(rx);
    (headers, Body::from_stream(stream)).into_response()
}

async fn summary(State(k): State<Arc<Kubelet>>) -> Response {
    match tokio::task::spawn_blocking(move || k.summary()).await {
        Ok(v) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The running attempt of a container, or the answer to give when there is none.
fn running(k: &Kubelet, ns: &str, pod: &str, container: &str) -> Result<Record, Response> {
    attempts(k, ns, pod, container)
        .into_iter()
        .rev()
        .find(|r| r.running())
        .ok_or_else(|| bad_request(format!("container {container} is not running in pod {pod}")))
}

async fn exec(
    State(k): State<Arc<Kubelet>>,
    Path(target): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    http: axum::extract::Request,
) -> Response {
    session(k, target, q, http, false).await
}

async fn attach(
    State(k): State<Arc<Kubelet>>,
    Path(target): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    http: axum::extract::Request,
) -> Response {
    session(k, target, q, http, true).await
}

/// An exec or attach session with a running container.
async fn session(
    k: Arc<Kubelet>,
    (ns, pod, container): (String, String, String),
    q: Vec<(String, String)>,
    http: axum::extract::Request,
    attach: bool,
) -> Response {
    let req = streaming::Request::from_query(&q);
    if !attach && req.command.is_empty() {
        return bad_request("you must specify at least one command for the container".into());
    }
    let record = match running(&k, &ns, &pod, &container) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let dir = k.runtime.dir(&record.meta.id);
    if attach {
        let log = record.meta.log_path.clone();
        return streaming::serve(http, req, move |io| streaming::exec::attach(io, log, dir)).await;
    }
    let exe = k.runtime.exe().to_path_buf();
    let (command, tty) = (req.command.clone(), req.tty);
    streaming::serve(http, req, move |io| {
        streaming::exec::run(io, exe, dir, command, tty)
    })
    .await
}

async fn port_forward(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod)): Path<(String, String)>,
    http: axum::extract::Request,
) -> Response {
    let uid = k.runtime.list().into_iter().find_map(|dir| {
        let m = dir.meta().ok()?;
        (m.pod_namespace == ns && m.pod_name == pod).then_some(m.pod_uid)
    });
    let Some(uid) = uid else {
        return bad_request(format!("pod {ns}/{pod} is not running on this node"));
    };
    let netns = kinglet_runtime::sandbox::pin(&k.pod_dir(&uid).join("sandbox"), "net");
    streaming::serve_port_forward(http, netns, pod).await
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_replaces_a_stale_one_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let first = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A socket left by an earlier run is replaced.
        drop(first);
        let _second = bind_private(&path).unwrap();
        tokio::net::UnixStream::connect(&path).await.unwrap();
        // Anything else in its place is left alone.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep").unwrap();
        assert!(bind_private(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
