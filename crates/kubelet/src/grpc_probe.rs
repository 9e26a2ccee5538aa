//! gRPC probes: the standard health check (`grpc.health.v1.Health/Check`) over plaintext
//! HTTP/2, from inside the pod's network namespace. The probe passes when the answer's status
//! is SERVING, as upstream's kubelet requires.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// `HealthCheckResponse.status` SERVING.
const SERVING: u64 = 1;

/// A gRPC message frame (uncompressed) holding `HealthCheckRequest { service }`.
fn request_frame(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited).
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of the `HealthCheckResponse` in the first message frame of `body`.
fn response_status(body: &[u8]) -> Option<u64> {
    let (head, rest) = body.split_at_checked(5)?;
    if head[0] != 0 {
        return None; // compressed: never asked for
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let msg = rest.get(..len)?;
    let mut pos = 0;
    let mut status = 0; // proto3 default: UNKNOWN
    while pos < msg.len() {
        let key = varint(msg, &mut pos)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(msg, &mut pos)?,
            (_, 0) => {
                varint(msg, &mut pos)?;
            }
            (_, 2) => {
                let n = usize::try_from(varint(msg, &mut pos)?).ok()?;
                pos = pos.checked_add(n).filter(|p| *p <= msg.len())?;
            }
            _ => return None,
        }
    }
    Some(status)
}

/// Whether the gRPC server at `addr` in the pod's network reports `service` as SERVING.
pub async fn serving(
    netns: &Path,
    addr: SocketAddr,
    service: Option<&str>,
    timeout: Duration,
) -> bool {
    let check = async {
        let tcp = super::probes::connect_in_netns(netns.to_path_buf(), addr, timeout)
            .await
            .ok()?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .ok()?;
        // The HTTP/2 connection task stops however the probe ends.
        let _driver = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
        let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "kube-probe/1.33")
            .body(Full::new(Bytes::from(request_frame(service.unwrap_or("")))))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let ok_status = resp.status() == http::StatusCode::OK
            && resp.headers().get("grpc-status").is_none_or(|s| s == "0");
        // A health answer is a few bytes; never buffer more than this of whatever comes.
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .ok()?;
        let trailer_ok = body
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .is_none_or(|s| s == "0");
        Some(ok_status && trailer_ok && response_status(&body.to_bytes()) == Some(SERVING))
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_round_trip() {
        assert_eq!(request_frame(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            request_frame("db"),
            vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(SERVING));
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), Some(0));
        // Truncated or garbage answers never count as serving.
        assert_eq!(response_status(&[0, 0, 0, 0, 9, 0x08]), None);
        assert_eq!(response_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 0xff]), None);
        // A length-delimited field running past the message.
        assert_eq!(response_status(&[0, 0, 0, 0, 4, 0x08, 1, 0x12, 9]), None);
    }
}
