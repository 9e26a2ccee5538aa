//! A small HTTPS server for tests that need a backend the API server calls (admission webhooks,
//! aggregated API servers). It makes its own CA and a serving certificate for the names asked,
//! answers every request with a handler closure, and can listen inside a test host's network
//! namespace. Plain threads and blocking rustls: no runtime needed in the test.
//!
//! ```ignore
//! let b = TlsBackend::start("127.0.0.1:0", &["127.0.0.1"], |method, path, body| (200, b"{}".to_vec()));
//! let ca = b.ca_pem(); // the caBundle
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// What a request is answered with: `(status, JSON body)`, from `(method, path with query, body)`.
pub type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, Vec<u8>) + Send + Sync;

pub struct TlsBackend {
    /// Where it listens (inside the test host's namespace when bound there).
    pub addr: SocketAddr,
    ca_pem: String,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

/// A CA and a serving certificate for `sans` (IP addresses or DNS names) signed by it:
/// `(ca_pem, cert_pem, key_pem)`.
pub fn make_certs(sans: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "test-backend-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().copied().unwrap_or("backend"),
    );
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*s).try_into().expect("DNS name")),
        })
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .expect("serving certificate");
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// Binds a TCP listener on `addr` inside the network namespace of process `pid` (a test host's
/// holder: `TestHost::pid()`). The socket stays in that namespace whichever thread uses it.
pub fn bind_in_netns(pid: u32, addr: &str) -> std::io::Result<TcpListener> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let addr = addr.to_string();
    // setns changes only the calling thread: do it on a thread of its own that then ends.
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        TcpListener::bind(addr)
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

impl TlsBackend {
    /// Serves HTTPS on `addr` (`127.0.0.1:0` for any port) with a certificate for `sans`.
    pub fn start(
        addr: &str,
        sans: &[&str],
        handler: impl Fn(&str, &str, &[u8]) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> TlsBackend {
        let listener = TcpListener::bind(addr).expect("bind test backend");
        TlsBackend::serve(listener, sans, handler)
    }

    /// Serves HTTPS on an already bound listener (e.g. from [`bind_in_netns`]).
    pub fn serve(
        listener: TcpListener,
        sans: &[&str],
        handler: impl Fn(&str, &str, &[u8]) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> TlsBackend {
        let (ca_pem, cert_pem, key_pem) = make_certs(sans);
        let certs = vec![rustls::pki_types::CertificateDer::from(
            pem_der(&cert_pem).expect("certificate PEM"),
        )];
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(pem_der(&key_pem).expect("key PEM").into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let addr = listener.local_addr().expect("local address");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let stop = stop.clone();
            let requests = requests.clone();
            // Polling accept: stopping needs no connection to the listener, which may be in
            // another network namespace.
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let config = config.clone();
                            let handler = handler.clone();
                            let requests = requests.clone();
                            let stop = stop.clone();
                            std::thread::spawn(move || {
                                let _ = connection(stream, config, &*handler, &requests, &stop);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        TlsBackend {
            addr,
            ca_pem,
            stop,
            requests,
        }
    }

    /// The CA that signed the serving certificate (PEM): a `caBundle`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA as the base64 a `caBundle` field takes.
    pub fn ca_bundle(&self) -> String {
        base64(self.ca_pem.as_bytes())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many requests were answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves HTTP/1.1 requests on one TLS connection until the peer closes it.
fn connection(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    handler: &Handler,
    requests: &AtomicUsize,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, stream));
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line)? == 0 || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if tls.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0; length];
        tls.read_exact(&mut body)?;
        let (status, answer) = handler(&method, &path, &body);
        requests.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reason(status),
            answer.len()
        );
        let out = tls.get_mut();
        out.write_all(head.as_bytes())?;
        out.write_all(&answer)?;
        out.flush()?;
        if close {
            out.conn.send_close_notify();
            let _ = out.flush();
            return Ok(());
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The DER of the first PEM block in `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    unbase64(&b64)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the test crate has no base64 dependency).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional).
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = B64.iter().position(|b| *b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
