//! Reaching the server behind a Service from the API server, for admission webhooks and
//! APIServices: the Service port resolved to ready endpoint addresses, dialled directly (as
//! upstream's endpoint routing: the service proxy's rules may not be in the API server's
//! network namespace), then one HTTP/1.1 connection over TLS checked for
//! `<service>.<namespace>.svc`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::Api;
use crate::context::Ctx;
use crate::lifecycle::{decorate, get_current};

/// How long dialling one address, the TLS handshake and the HTTP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A Service port (`service` of a webhook's clientConfig or of an APIService's spec).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl ServiceRef {
    /// Reads `{namespace, name, port}`, the port defaulting to 443 as upstream.
    pub fn of(service: &Value) -> Option<ServiceRef> {
        let s = service.as_object()?;
        let text = |k: &str| {
            s.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(ServiceRef {
            namespace: text("namespace"),
            name: text("name"),
            port: s
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443),
        })
    }

    /// The name the server's certificate must hold.
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

/// Why a Service has no usable endpoint: upstream's reason (as an APIService's condition
/// carries it) and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

async fn get(api: &Api, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let res = api.registry.find(group, "v1", plural)?;
    let ctx = Ctx::internal(group, "v1", plural, Some(ns));
    get_current(api, &res, &ctx, name)
        .await
        .ok()
        .map(|(_, v)| v)
}

async fn list(api: &Api, group: &str, plural: &str, ns: &str) -> Vec<Value> {
    let Some(res) = api.registry.find(group, "v1", plural) else {
        return Vec::new();
    };
    let Ok(page) = api
        .store
        .list(&res.ns_prefix(Some(ns)), 0, None, None)
        .await
    else {
        return Vec::new();
    };
    page.items
        .iter()
        .filter_map(|r| decorate(&res, r).ok())
        .collect()
}

/// The ready endpoint addresses of the Service's port (the Service port's name picks the
/// endpoint port), from its EndpointSlices and its Endpoints; an ExternalName Service's name
/// looked up. Addresses no one should be sent to (loopback, link-local) are left out, as
/// upstream's validation keeps them out of endpoints.
pub async fn resolve(api: &Api, svc: &ServiceRef) -> Result<Vec<SocketAddr>, Unresolved> {
    let Some(service) = get(api, "", "services", &svc.namespace, &svc.name).await else {
        return Err(Unresolved {
            reason: "ServiceNotFound",
            message: format!("service/{} in {:?} is not present", svc.name, svc.namespace),
        });
    };
    if service.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        let host = service
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let unresolved = |message: String| Unresolved {
            reason: "EndpointsNotFound",
            message,
        };
        let found =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, svc.port)))
                .await
                .map_err(|_| unresolved(format!("dial tcp: lookup {host}: i/o timeout")))?
                .map_err(|e| unresolved(format!("dial tcp: lookup {host}: {e}")))?;
        // The same addresses are refused as for endpoints.
        let addrs: Vec<SocketAddr> = found
            .filter(|a| crate::proxy::proxyable(&a.ip().to_string()).is_some())
            .collect();
        if addrs.is_empty() {
            return Err(unresolved(format!(
                "{host} has no address that may be dialled"
            )));
        }
        return Ok(addrs);
    }
    let Some(port) = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(svc.port.into()))
    else {
        return Err(Unresolved {
            reason: "ServicePortError",
            message: format!(
                "service/{} in {:?} is not listening on port {}",
                svc.name, svc.namespace, svc.port
            ),
        });
    };
    let port_name = port["name"].as_str().unwrap_or_default().to_string();
    let mut addrs = Vec::new();
    let mut add = |ip: Option<&str>, port: u16| {
        if let Some(ip) = ip.and_then(crate::proxy::proxyable)
            && !addrs.contains(&SocketAddr::new(ip, port))
        {
            addrs.push(SocketAddr::new(ip, port));
        }
    };
    let slices: Vec<Value> = list(api, "discovery.k8s.io", "endpointslices", &svc.namespace)
        .await
        .into_iter()
        .filter(|s| {
            s.pointer("/metadata/labels/kubernetes.io~1service-name")
                .and_then(Value::as_str)
                == Some(svc.name.as_str())
        })
        .collect();
    for slice in &slices {
        let Some(number) = named_port(slice.get("ports"), &port_name) else {
            continue;
        };
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            if ep.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            for a in ep["addresses"].as_array().into_iter().flatten() {
                add(a.as_str(), number);
            }
        }
    }
    // Endpoints objects count too, for clusters that write those rather than slices.
    let endpoints = get(api, "", "endpoints", &svc.namespace, &svc.name).await;
    for subset in endpoints
        .as_ref()
        .and_then(|e| e["subsets"].as_array())
        .into_iter()
        .flatten()
    {
        let Some(number) = named_port(subset.get("ports"), &port_name) else {
            continue;
        };
        for a in subset["addresses"].as_array().into_iter().flatten() {
            add(a["ip"].as_str(), number);
        }
    }
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    if slices.is_empty() && endpoints.is_none() {
        return Err(Unresolved {
            reason: "EndpointsNotFound",
            message: format!(
                "cannot find endpointslices for service/{} in {:?}",
                svc.name, svc.namespace
            ),
        });
    }
    Err(Unresolved {
        reason: "MissingEndpoints",
        message: format!(
            "endpointslices for service/{} in {:?} have no addresses with port name {port_name:?}",
            svc.name, svc.namespace
        ),
    })
}

/// The port number named `name` in a list of endpoint ports (an unnamed port matches "").
fn named_port(ports: Option<&Value>, name: &str) -> Option<u16> {
    ports?
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str().unwrap_or_default() == name)
        .and_then(|p| p["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// An HTTP/1.1 connection over TLS (server name `server_name`) to one of `addrs`, trying them
/// from a random one on so that load spreads; upgrades allowed. Each attempt is bounded.
pub async fn connect(
    tls: &Arc<rustls::ClientConfig>,
    server_name: &str,
    addrs: &[SocketAddr],
) -> Result<(SocketAddr, hyper::client::conn::http1::SendRequest<Body>), String> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let mut last = String::from("no endpoints");
    let start = if addrs.is_empty() {
        0
    } else {
        rand::random_range(0..addrs.len())
    };
    for i in 0..addrs.len() {
        let addr = addrs[(start + i) % addrs.len()];
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok::<_, String>(sender)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(sender)) => return Ok((addr, sender)),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("dial tcp {addr}: i/o timeout"),
        }
    }
    Err(last)
}

/// The certificates of a base64 PEM `caBundle` (`field` names it in errors).
pub fn ca_bundle_roots(b64: &str, field: &str) -> Result<rustls::RootCertStore, String> {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("{field}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{field}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{field}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{field} holds no certificate"));
    }
    Ok(roots)
}

/// The host's trusted roots, read once (for webhooks without a `caBundle`).
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            // Certificates webpki refuses are skipped; the rest still count.
            let (_, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_refs_default_to_port_443() {
        let s = ServiceRef::of(&json!({"namespace": "ns", "name": "api"})).unwrap();
        assert_eq!(s.port, 443);
        assert_eq!(s.server_name(), "api.ns.svc");
        assert!(ServiceRef::of(&Value::Null).is_none());
    }

    #[test]
    fn named_ports() {
        let ports = json!([{"name": "https", "port": 8443}, {"port": 80}]);
        assert_eq!(named_port(Some(&ports), "https"), Some(8443));
        assert_eq!(named_port(Some(&ports), ""), Some(80));
        assert_eq!(named_port(Some(&ports), "other"), None);
    }

    #[test]
    fn ca_bundles_must_hold_certificates() {
        assert!(ca_bundle_roots("not base64!", "caBundle").is_err());
        assert!(ca_bundle_roots("", "caBundle").is_err());
    }
}
