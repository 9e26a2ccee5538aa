//! The WebSocket transports. Channel protocol (`v5.channel.k8s.io`, also v4): binary messages
//! whose first byte names the stream (0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4 terminal
//! resize, 255 "close this stream"). Port-forward tunnel (`SPDY/3.1+portforward.k8s.io`, kubectl
//! >= 1.31): binary messages carrying the raw bytes of a SPDY connection.

use std::future::Future;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Io, Outcome, Request, Size};

pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
pub const TUNNELED_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// A normal closure (1000): clients read it as the end of every stream.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

/// Terminal sizes from a byte stream of JSON objects (one per message or per line).
pub fn decode_sizes(mut data: mpsc::Receiver<Vec<u8>>) -> mpsc::Receiver<Size> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(chunk) = data.recv().await {
            buf.extend_from_slice(&chunk);
            let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<Size>();
            let mut used = 0;
            while let Some(next) = sizes.next() {
                match next {
                    Ok(size) => {
                        used = sizes.byte_offset();
                        if tx.send(size).await.is_err() {
                            return;
                        }
                    }
                    // An object cut in two: wait for the rest.
                    Err(e) if e.is_eof() => break,
                    Err(_) => {
                        used = buf.len();
                        break;
                    }
                }
            }
            buf.drain(..used);
            // Sizes are tiny objects: anything this long is not one.
            if buf.len() > 4096 {
                buf.clear();
            }
        }
    });
    rx
}

/// Runs an exec/attach job over the channel protocol.
pub async fn serve<J, Fut>(socket: WebSocket, req: Request, job: J)
where
    J: FnOnce(Io) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let (mut tx, mut rx) = socket.split();
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(16);
    let (io, mut outputs) = Io::new(
        &req,
        req.stdin.then_some(stdin_rx),
        req.tty.then(|| decode_sizes(resize_rx)),
    );
    // Client -> stdin and resize, until the client closes them or goes away.
    let input = tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(s) = &stdin
                        && s.send(data[1..].to_vec()).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(&RESIZE) => {
                    let _ = resize_tx.send(data[1..].to_vec()).await;
                }
                Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    });
    let pump = async {
        while let Some((channel, data)) = outputs.recv().await {
            if tx.send(frame(channel, &data)).await.is_err() {
                break;
            }
        }
    };
    let (outcome, ()) = tokio::join!(job(io), pump);
    let status = outcome.status().to_string();
    let _ = tx.send(frame(ERROR, status.as_bytes())).await;
    let _ = tx.send(normal_close()).await;
    input.abort();
}

/// The byte stream carried by a tunneling WebSocket (each binary message is a chunk of it).
pub fn tunnel(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut ws_tx, mut ws_rx) = socket.split();
        let (mut r, mut w) = tokio::io::split(ours);
        let up = async {
            while let Some(Ok(msg)) = ws_rx.next().await {
                match msg {
                    Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = w.shutdown().await;
        };
        let down = async {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0
                    || ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = ws_tx.send(normal_close()).await;
        };
        tokio::join!(up, down);
    });
    theirs
}
