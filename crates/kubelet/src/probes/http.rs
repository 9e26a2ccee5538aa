//! httpGet probes and hooks as upstream's prober makes them: `GET <path>` over HTTP or HTTPS
//! (without certificate verification, as upstream's `InsecureSkipVerify`) to the handler's host
//! or the pod's IP, with the handler's `httpHeaders` (repeats kept; a Host entry becomes the
//! Host), `User-Agent: kube-probe/<v>` and `Accept: */*` unless the headers set their own (an
//! empty one removes it), no keep-alive. A status from 200 to 399
//! passes. Redirects are not followed: a 3xx passes (upstream follows those to the same host and
//! passes those elsewhere with a warning).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// What one httpGet handler asks for, its target resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Get {
    pub https: bool,
    /// The handler's `host`, else the pod's IP: the URL's host, and the TLS server name.
    pub host: String,
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Get {
    /// The request upstream sends for this handler; None if the path or a header cannot be
    /// sent (the API validates both; a probe that cannot be sent fails).
    pub fn request(&self) -> Option<http::Request<Empty<Bytes>>> {
        let path = if self.path.is_empty() {
            "/".to_string()
        } else if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        };
        let target = http::uri::PathAndQuery::try_from(path.as_str()).ok()?;
        let mut req = http::Request::get(http::Uri::from(target))
            .body(Empty::new())
            .ok()?;
        let h = req.headers_mut();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            h.append(name, HeaderValue::from_str(value).ok()?);
        }
        // Host: the first one the handler gives unless empty, else the target; never two.
        let authority = match self.host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]:{}", self.host, self.port),
            Err(_) => format!("{}:{}", self.host, self.port),
        };
        let host = match h.get(HOST).filter(|v| !v.is_empty()) {
            Some(v) => v.clone(),
            None => HeaderValue::from_str(&authority).ok()?,
        };
        h.insert(HOST, host);
        // Defaults unless the handler sets them; set empty, they are not sent at all.
        for (name, default) in [(USER_AGENT, "kube-probe/1.33"), (ACCEPT, "*/*")] {
            match h.get(&name).map(HeaderValue::is_empty) {
                None => {
                    h.insert(name, HeaderValue::from_static(default));
                }
                Some(true) => {
                    h.remove(name);
                }
                Some(false) => {}
            }
        }
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        Some(req)
    }
}

/// Whether a status passes, as upstream: 2xx, and 3xx that was not followed.
pub fn passes(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Sends `get` over `tcp` (already connected to its target) and returns the response status,
/// within `timeout`.
pub async fn status(tcp: tokio::net::TcpStream, get: &Get, timeout: Duration) -> Option<u16> {
    let exchange = async {
        if get.https {
            let name = match get.host.parse::<std::net::IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(get.host.clone()).ok()?,
            };
            let tls = tokio_rustls::TlsConnector::from(Arc::new(insecure_client()?))
                .connect(name, tcp)
                .await
                .ok()?;
            send(tls, get).await
        } else {
            send(tcp, get).await
        }
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

async fn send<S>(io: S, get: &Get) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .ok()?;
    let driver = tokio::spawn(conn);
    let status = sender
        .send_request(get.request()?)
        .await
        .ok()
        .map(|r| r.status().as_u16());
    // The answer's body is of no interest; the connection goes with the probe.
    driver.abort();
    status
}

/// A TLS client that accepts any server certificate: upstream's probes do not verify.
fn insecure_client() -> Option<rustls::ClientConfig> {
    kinglet_pki::tls::unverified_client_config().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get(path: &str, headers: &[(&str, &str)]) -> Get {
        Get {
            https: false,
            host: "10.42.0.7".into(),
            port: 8080,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn header<'a>(req: &'a http::Request<Empty<Bytes>>, name: &str) -> Vec<&'a str> {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn requests_carry_upstreams_defaults_and_the_handlers_headers() {
        let req = get("/healthz?full=1", &[]).request().unwrap();
        assert_eq!(req.uri(), "/healthz?full=1");
        assert_eq!(header(&req, "host"), ["10.42.0.7:8080"]);
        assert_eq!(header(&req, "user-agent"), ["kube-probe/1.33"]);
        assert_eq!(header(&req, "accept"), ["*/*"]);
        assert_eq!(header(&req, "connection"), ["close"]);
        assert_eq!(get("", &[]).request().unwrap().uri(), "/");
        assert_eq!(get("ready", &[]).request().unwrap().uri(), "/ready");

        let req = get(
            "/",
            &[
                ("Host", "app.example"),
                ("X-Probe", "a"),
                ("x-probe", "b"),
                ("User-Agent", "mine"),
                ("Accept", "application/json"),
            ],
        )
        .request()
        .unwrap();
        assert_eq!(header(&req, "host"), ["app.example"]);
        assert_eq!(header(&req, "x-probe"), ["a", "b"]);
        assert_eq!(header(&req, "user-agent"), ["mine"]);
        assert_eq!(header(&req, "accept"), ["application/json"]);
        let req = get("/", &[("Host", ""), ("User-Agent", ""), ("Accept", "")])
            .request()
            .unwrap();
        assert_eq!(
            header(&req, "host"),
            ["10.42.0.7:8080"],
            "empty: the target"
        );
        assert!(header(&req, "user-agent").is_empty() && header(&req, "accept").is_empty());

        let v6 = Get {
            host: "fd00::7".into(),
            ..get("/", &[])
        };
        assert_eq!(header(&v6.request().unwrap(), "host"), ["[fd00::7]:8080"]);
        assert!(get("/a b", &[]).request().is_none(), "not a valid path");
        assert!(get("/", &[("bad name", "x")]).request().is_none());
        for (code, ok) in [(200, true), (204, true), (302, true), (399, true)] {
            assert_eq!(passes(code), ok, "{code}");
        }
        for code in [100, 199, 400, 404, 500] {
            assert!(!passes(code), "{code}");
        }
    }

    /// A one-shot server on loopback: answers `reply` to the first connection and hands back
    /// what it was sent.
    async fn serve_once(
        reply: &'static str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match tls {
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match acceptor.accept(tcp).await {
                        Ok(s) => exchange(s, reply).await,
                        Err(e) => format!("handshake failed: {e}"),
                    }
                }
                None => exchange(tcp, reply).await,
            }
        });
        (port, task)
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: &str) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.ends_with(b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.shutdown().await;
        String::from_utf8_lossy(&seen).into_owned()
    }

    async fn probe(port: u16, https: bool, headers: &[(&str, &str)]) -> Option<u16> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let g = Get {
            https,
            host: "127.0.0.1".into(),
            port,
            ..get("/healthz", headers)
        };
        status(tcp, &g, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn the_status_line_decides_and_the_headers_are_sent() {
        let (port, seen) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None).await;
        let code = probe(port, false, &[("Host", "app.example"), ("X-Probe", "yes")]).await;
        assert_eq!(code, Some(200));
        let seen = seen.await.unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("get /healthz http/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nhost: app.example\r\n"), "{seen}");
        assert!(seen.contains("\r\nx-probe: yes\r\n"), "{seen}");
        assert!(
            seen.contains("\r\nuser-agent: kube-probe/1.33\r\n"),
            "{seen}"
        );

        let (port, _) = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            None,
        )
        .await;
        assert_eq!(probe(port, false, &[]).await, Some(503));
        let (port, _) = serve_once("HTTP/1.0 301 Moved\r\nLocation: /x\r\n\r\n", None).await;
        assert_eq!(probe(port, false, &[]).await, Some(301));
        // Not HTTP at all: no status.
        let (port, _) = serve_once("SSH-2.0-OpenSSH\r\n\r\n", None).await;
        assert_eq!(probe(port, false, &[]).await, None);
    }

    #[tokio::test]
    async fn https_probes_accept_any_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["pod.invalid".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let config = Arc::new(config);
        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (port, seen) = serve_once(reply, Some(config.clone())).await;
        assert_eq!(probe(port, true, &[("X-Probe", "tls")]).await, Some(200));
        let seen = seen.await.unwrap().to_ascii_lowercase();
        assert!(seen.contains("\r\nx-probe: tls\r\n"), "{seen}");
        // Plain HTTP to a TLS port gets no status.
        let (port, _) = serve_once(reply, Some(config)).await;
        assert_eq!(probe(port, false, &[]).await, None);
    }
}
