//! `kubectl exec` on the node: the WebSocket channel protocol (`v5.channel.k8s.io`, also v4):
//! binary messages whose first byte names the stream (0 stdin, 1 stdout, 2 stderr, 3 the final
//! Status, 4 terminal resize, 255 "close this stream"). The command runs through the
//! `kinglet exec` helper, so libcontainer never runs in this multi-threaded process.

use std::process::Stdio;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::ContainerDir;

pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

/// What the client asked for in the query string.
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
        let flag = |k: &str| {
            pairs
                .iter()
                .any(|(n, v)| n == k && (v == "true" || v == "1"))
        };
        Request {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// The Status sent on the error channel when the command ends.
fn final_status(code: Option<i32>, command: &[String]) -> serde_json::Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({
            "metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "the command was killed",
        }),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Runs the exec session over an upgraded WebSocket.
pub async fn run(socket: WebSocket, exe: std::path::PathBuf, dir: ContainerDir, req: Request) {
    let (mut tx, mut rx) = socket.split();
    let child = tokio::process::Command::new(&exe)
        .arg("exec")
        .arg(&dir.0)
        .arg("--")
        .args(&req.command)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": e.to_string()});
            let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return;
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(32);
    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>, channel: u8, wanted: bool| {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) if wanted => {
                        if out_tx.send(frame(channel, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
        })
    };
    let out_task = pump(Box::new(stdout), STDOUT, req.stdout);
    // A terminal has one output stream: stderr goes where stdout goes.
    let err_task = if req.tty {
        pump(Box::new(stderr), STDOUT, req.stdout)
    } else {
        pump(Box::new(stderr), STDERR, req.stderr)
    };
    drop(out_tx);
    // Client -> stdin, until the client closes stdin or goes away.
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    });
    // Output to the client as it comes, then the exit status.
    while let Some(msg) = out_rx.recv().await {
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    let _ = out_task.await;
    let _ = err_task.await;
    let code = child.wait().await.ok().and_then(|s| s.code());
    let _ = tx
        .send(frame(
            ERROR,
            final_status(code, &req.command).to_string().as_bytes(),
        ))
        .await;
    // A normal closure (1000): clients read it as the end of every stream.
    let _ = tx
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    input.abort();
}
