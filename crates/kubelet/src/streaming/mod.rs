//! Streaming sessions of the kubelet API — exec, attach and port-forward — over both transports
//! kubectl speaks: WebSocket channels (`v5.channel.k8s.io`, kubectl >= 1.30) and SPDY/3.1
//! streams (older kubectl, port-forward, and the fallback of newer ones). A session's job sees
//! only [`Io`]; the transport carries it.

pub mod exec;
mod portforward;
mod spdy;
mod websocket;

use std::future::Future;

use axum::extract::FromRequest;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

pub use portforward::serve as port_forward;

/// What the client asked for (the API server passes kubectl's query string on unchanged;
/// upstream's kubelet spelling `input`/`output`/`error` is read too).
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Request {
    pub fn from_query(pairs: &[(String, String)]) -> Request {
        let flag = |names: &[&str]| {
            pairs
                .iter()
                .any(|(n, v)| names.contains(&n.as_str()) && (v == "true" || v == "1"))
        };
        let tty = flag(&["tty"]);
        Request {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag(&["stdin", "input"]),
            stdout: flag(&["stdout", "output"]),
            // A terminal has one output stream.
            stderr: flag(&["stderr", "error"]) && !tty,
            tty,
        }
    }
}

/// A terminal size, as clients send it (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Size {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// An output stream of the session; cheap to clone.
#[derive(Clone)]
pub struct Output {
    tag: u8,
    tx: mpsc::Sender<(u8, Vec<u8>)>,
}

impl Output {
    /// False once the client is gone.
    pub async fn write(&self, data: Vec<u8>) -> bool {
        self.tx.send((self.tag, data)).await.is_ok()
    }
}

const STDOUT: u8 = 1;
const STDERR: u8 = 2;

/// The streams of a session, as its job uses them.
pub struct Io {
    /// Ends when the client closes its input.
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    pub resize: Option<mpsc::Receiver<Size>>,
}

impl Io {
    /// The Io for `req`, and the receiving end of its outputs (tagged STDOUT/STDERR).
    fn new(
        req: &Request,
        stdin: Option<mpsc::Receiver<Vec<u8>>>,
        resize: Option<mpsc::Receiver<Size>>,
    ) -> (Io, mpsc::Receiver<(u8, Vec<u8>)>) {
        let (tx, rx) = mpsc::channel(32);
        let out = |wanted: bool, tag: u8| {
            wanted.then(|| Output {
                tag,
                tx: tx.clone(),
            })
        };
        let io = Io {
            stdin,
            stdout: out(req.stdout, STDOUT),
            stderr: out(req.stderr, STDERR),
            resize,
        };
        (io, rx)
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

impl Outcome {
    /// The `metav1.Status` of the error channel (protocol v4 and later).
    fn status(&self) -> serde_json::Value {
        match self {
            Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(message) => json!({
                "metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                "message": format!("Internal error occurred: {message}"),
            }),
        }
    }
    /// The error channel's text in protocols before v4 (nothing on success).
    fn text(&self) -> Option<String> {
        match self {
            Outcome::Exited(0) => None,
            Outcome::Exited(code) => Some(format!(
                "command terminated with non-zero exit code: exit status {code}"
            )),
            Outcome::Failed(m) => Some(m.clone()),
        }
    }
}

/// Channel protocols offered over SPDY, best first (upstream's kubelet never offers v5 there).
const SPDY_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, msg.into()).into_response()
}

/// Which transport the client asks to switch to.
enum Transport {
    WebSocket,
    Spdy,
}

fn transport(headers: &HeaderMap) -> Option<Transport> {
    let upgrade = headers
        .get(http::header::UPGRADE)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    if upgrade.contains("websocket") {
        Some(Transport::WebSocket)
    } else if upgrade.contains("spdy/3.1") {
        Some(Transport::Spdy)
    } else {
        None
    }
}

/// The first protocol the client offers (in its order) that we speak, for SPDY upgrades.
fn negotiate(headers: &HeaderMap, ours: &[&'static str]) -> Result<&'static str, Response> {
    let offered: Vec<String> = headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    offered
        .iter()
        .find_map(|o| ours.iter().find(|p| **p == o.as_str()).copied())
        .ok_or_else(|| {
            let mut r = (
                StatusCode::FORBIDDEN,
                format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {ours:?}"),
            )
                .into_response();
            for p in ours {
                r.headers_mut().append(
                    "x-accepted-stream-protocol-versions",
                    http::HeaderValue::from_static(p),
                );
            }
            r
        })
}

/// Answers a SPDY upgrade with `protocol` and runs `session` on the upgraded connection.
fn switch_to_spdy<F, Fut>(
    mut req: axum::extract::Request,
    protocol: &'static str,
    session: F,
) -> Response
where
    F: FnOnce(spdy::Session) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                session(spdy::Session::start(hyper_util::rt::TokioIo::new(upgraded))).await
            }
            Err(e) => tracing::debug!("spdy upgrade: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

/// Serves an exec or attach session: `job` runs with the streams `req` asks for, over whichever
/// transport the client upgrades to.
pub async fn serve<J, Fut>(http: axum::extract::Request, req: Request, job: J) -> Response
where
    J: FnOnce(Io) -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    if !(req.stdin || req.stdout || req.stderr) {
        return bad_request("you must specify at least 1 of stdin, stdout, stderr");
    }
    match transport(http.headers()) {
        Some(Transport::WebSocket) => {
            match axum::extract::ws::WebSocketUpgrade::from_request(http, &()).await {
                Ok(ws) => ws
                    .protocols(websocket::PROTOCOLS)
                    .on_upgrade(move |socket| websocket::serve(socket, req, job)),
                Err(e) => e.into_response(),
            }
        }
        Some(Transport::Spdy) => match negotiate(http.headers(), &SPDY_PROTOCOLS) {
            Ok(protocol) => switch_to_spdy(http, protocol, move |session| {
                over_spdy(session, protocol, req, job)
            }),
            Err(r) => r,
        },
        None => bad_request("Upgrade request required"),
    }
}

/// Serves a port-forward session into the network namespace pinned at `netns`.
pub async fn serve_port_forward(
    http: axum::extract::Request,
    netns: std::path::PathBuf,
    pod: String,
) -> Response {
    match transport(http.headers()) {
        Some(Transport::WebSocket) => {
            match axum::extract::ws::WebSocketUpgrade::from_request(http, &()).await {
                Ok(ws) => ws.protocols([websocket::TUNNELED_PORT_FORWARD]).on_upgrade(
                    move |socket| async move {
                        tracing::info!(%pod, "port-forward through a WebSocket tunnel");
                        let session = spdy::Session::start(websocket::tunnel(socket));
                        port_forward(session, netns, pod).await
                    },
                ),
                Err(e) => e.into_response(),
            }
        }
        Some(Transport::Spdy) => match negotiate(http.headers(), &[PORT_FORWARD_PROTOCOL]) {
            Ok(protocol) => switch_to_spdy(http, protocol, move |session| {
                tracing::info!(%pod, "port-forward over SPDY");
                port_forward(session, netns, pod)
            }),
            Err(r) => r,
        },
        None => bad_request("Upgrade request required"),
    }
}

/// The SPDY side of exec/attach: the client opens one stream per channel (`streamtype` header),
/// error first; the job starts once all the request's streams are there.
async fn over_spdy<J, Fut>(mut session: spdy::Session, protocol: &str, req: Request, job: J)
where
    J: FnOnce(Io) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let resize_supported = !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io");
    let mut wanted = vec!["error"];
    for (on, name) in [
        (req.stdin, "stdin"),
        (req.stdout, "stdout"),
        (req.stderr, "stderr"),
        (req.tty && resize_supported, "resize"),
    ] {
        if on {
            wanted.push(name);
        }
    }
    let mut streams = std::collections::HashMap::new();
    let collect = async {
        while streams.len() < wanted.len() {
            let Some(s) = session.streams.recv().await else {
                return false;
            };
            let kind = s.header("streamtype").unwrap_or_default().to_string();
            if wanted.contains(&kind.as_str()) {
                streams.insert(kind, s);
            }
        }
        true
    };
    let complete = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(30), collect).await,
        Ok(true)
    );
    if !complete {
        tracing::debug!("timed out waiting for client to create streams");
        session.close().await;
        return;
    }
    session.refuse_more_streams();
    let mut take = |name: &str| streams.remove(name);
    let error = take("error");
    let stdin = take("stdin");
    let stdout = take("stdout").map(|s| s.out);
    let stderr = take("stderr").map(|s| s.out);
    let resize = take("resize").map(|s| websocket::decode_sizes(s.data));
    let stdin_out = stdin.as_ref().map(|s| s.out.clone());
    let (io, mut outputs) = Io::new(&req, stdin.map(|s| s.data), resize);
    let pump = async {
        while let Some((tag, data)) = outputs.recv().await {
            let to = if tag == STDOUT { &stdout } else { &stderr };
            if let Some(s) = to {
                s.write(data).await;
            }
        }
    };
    let (outcome, ()) = tokio::join!(job(io), pump);
    for s in [&stdout, &stderr, &stdin_out].into_iter().flatten() {
        s.finish().await;
    }
    if let Some(e) = error {
        let message = if protocol == "v4.channel.k8s.io" {
            Some(outcome.status().to_string())
        } else {
            outcome.text()
        };
        if let Some(m) = message {
            e.out.write(m.into_bytes()).await;
        }
        e.out.finish().await;
    }
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_query_spellings_and_tty_merges_stderr() {
        let r = Request::from_query(&pairs("command=sh&input=1&output=1&error=1&tty=1"));
        assert!(r.stdin && r.stdout && r.tty && !r.stderr);
        let r = Request::from_query(&pairs("command=ls&command=-l&stdout=true&stderr=true"));
        assert_eq!(r.command, ["ls", "-l"]);
        assert!(!r.stdin && r.stdout && r.stderr);
    }

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let mut h = HeaderMap::new();
        for v in [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
        ] {
            h.append("x-stream-protocol-version", v.parse().unwrap());
        }
        assert_eq!(
            negotiate(&h, &SPDY_PROTOCOLS).ok(),
            Some("v4.channel.k8s.io")
        );
        let mut h = HeaderMap::new();
        h.append("x-stream-protocol-version", "v9.example".parse().unwrap());
        let r = negotiate(&h, &SPDY_PROTOCOLS).unwrap_err();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn exit_codes_become_upstreams_status() {
        let s = Outcome::Exited(3).status();
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(Outcome::Exited(0).status()["status"], "Success");
        assert!(Outcome::Exited(0).text().is_none());
    }
}
