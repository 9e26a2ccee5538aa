//! `kubectl port-forward` over SPDY: for each local connection the client opens an `error` and a
//! `data` stream with the same `requestid` and the pod `port`; we connect to that port inside the
//! pod's network namespace and copy bytes both ways. Failures are written as text on the error
//! stream, as upstream's kubelet does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy::{Session, Stream};

/// How long the second stream of a request may take (upstream's stream creation timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Instant,
}

/// Serves one port-forward connection until the client closes it.
pub async fn serve(mut session: Session, netns: PathBuf, pod: String) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = session.streams.recv().await {
        // Requests whose other stream never came are answered and dropped.
        let stale: Vec<String> = pairs
            .iter()
            .filter(|(_, p)| p.since.elapsed() > PAIR_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(p) = pairs.remove(&id) {
                if let Some(e) = p.error {
                    let msg = format!("timed out waiting for streams of request {id}");
                    e.out.write(msg.into_bytes()).await;
                    e.out.finish().await;
                }
                if let Some(d) = p.data {
                    d.out.reset().await;
                }
            }
        }
        let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port.filter(|p| *p > 0) else {
            stream.out.reset().await;
            continue;
        };
        // Old clients send no request ID: the error stream's ID pairs with the data stream's.
        let request = match stream.header("requestid") {
            Some(id) => id.to_string(),
            None if stream.header("streamtype") == Some("data") => {
                stream.id.saturating_sub(2).to_string()
            }
            None => stream.id.to_string(),
        };
        let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
            error: None,
            data: None,
            since: Instant::now(),
        });
        match stream.header("streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            _ => {
                stream.out.reset().await;
                continue;
            }
        }
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&request)
        {
            tokio::spawn(forward(error, data, port, netns.clone(), pod.clone()));
        }
    }
    session.close().await;
}

async fn forward(error: Stream, data: Stream, port: u16, netns: PathBuf, pod: String) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let conn = match crate::probes::connect_in_netns(netns, addr, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            error.out.write(msg.into_bytes()).await;
            // Closed rather than reset, so the client does not drop the message.
            error.out.finish().await;
            data.out.reset().await;
            return;
        }
    };
    let (mut r, mut w) = conn.into_split();
    let mut from_client = data.data;
    let mut to_pod = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    // The request ends when the pod's side of the connection does, or a while after the
    // client's side did (a pod server that ignores half-closed connections is not waited for).
    let from_pod = async {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 || !data.out.write(buf[..n].to_vec()).await {
                break;
            }
        }
    };
    let client_gone = async {
        let _ = (&mut to_pod).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    };
    tokio::select! {
        _ = from_pod => {}
        _ = client_gone => {}
    }
    data.out.finish().await;
    error.out.finish().await;
    to_pod.abort();
}
