//! Reaching an APIService's server: its Service resolved to a ready endpoint (the API server
//! connects to endpoints directly, as upstream's `--enable-aggregator-routing`), TLS towards
//! `<service>.<namespace>.svc` checked against the APIService's `caBundle`, and the front proxy's
//! certificate (its own CA, see `kinglet_pki::Pki::front_proxy_ca`) as the proxy's identity.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::Api;
use crate::context::Ctx;
use crate::lifecycle::{decorate, get_current};

/// `spec.service` of an APIService.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl ServiceRef {
    pub fn of(apiservice: &Value) -> Option<ServiceRef> {
        let svc = apiservice
            .pointer("/spec/service")
            .filter(|s| s.is_object())?;
        Some(ServiceRef {
            namespace: svc["namespace"].as_str().unwrap_or_default().to_string(),
            name: svc["name"].as_str().unwrap_or_default().to_string(),
            port: svc["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443),
        })
    }

    /// The name the backend's serving certificate must hold.
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

/// Why a Service has no usable endpoint: upstream's condition reason and message.
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

/// The ready endpoints of the Service's port `svc.port`, as upstream's availability controller
/// checks them (the Service port's name picks the endpoint port).
pub async fn resolve(api: &Api, svc: &ServiceRef) -> Result<Vec<SocketAddr>, Unresolved> {
    let Some(service) = get(api, "", "services", &svc.namespace, &svc.name).await else {
        return Err(Unresolved {
            reason: "ServiceNotFound",
            message: format!("service/{} in {:?} is not present", svc.name, svc.namespace),
        });
    };
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(port) = ports
        .iter()
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
                if let Some(ip) = a.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                    addrs.push(SocketAddr::new(ip, number));
                }
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
            if let Some(ip) = a["ip"].as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                let addr = SocketAddr::new(ip, number);
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
    }
    if addrs.is_empty() {
        if slices.is_empty() && endpoints.is_none() {
            return Err(Unresolved {
                reason: "EndpointsNotFound",
                message: format!(
                    "cannot find endpointslices for service/{} in {:?}",
                    svc.name, svc.namespace
                ),
            });
        }
        return Err(Unresolved {
            reason: "MissingEndpoints",
            message: format!(
                "endpointslices for service/{} in {:?} have no addresses with port name {port_name:?}",
                svc.name, svc.namespace
            ),
        });
    }
    Ok(addrs)
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

/// The client TLS settings for an APIService: the front proxy's client certificate, and the
/// server checked against `spec.caBundle` (the cluster CA when empty), or not at all with
/// `insecureSkipTLSVerify` (`insecure` forces the latter).
pub fn tls_config(
    api: &Api,
    apiservice: &Value,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let base = api
        .front_proxy
        .get()
        .ok_or("the API server has no front proxy credentials yet")?;
    let mut config = (*base.tls).clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let skip = insecure
        || apiservice
            .pointer("/spec/insecureSkipTLSVerify")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let bundle = apiservice
        .pointer("/spec/caBundle")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty());
    if skip {
        config
            .dangerous()
            .set_certificate_verifier(kinglet_pki::tls::AnyServerCertificate::new());
    } else if let Some(b64) = bundle {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("spec.caBundle: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("spec.caBundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("spec.caBundle: {e}"))?;
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("spec.caBundle: {e}"))?;
        config.dangerous().set_certificate_verifier(verifier);
    }
    Ok(Arc::new(config))
}

/// An HTTP/1.1 connection over TLS to one of `addrs` (the first that answers), allowing upgrades.
pub async fn connect(
    tls: &Arc<rustls::ClientConfig>,
    server_name: &str,
    addrs: &[SocketAddr],
) -> Result<(SocketAddr, hyper::client::conn::http1::SendRequest<Body>), String> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let mut last = String::from("no endpoints");
    // Start at a random endpoint so load spreads over them.
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
                .map_err(|e| format!("dial tcp {addr}: {e}"))?;
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
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(sender)) => return Ok((addr, sender)),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("dial tcp {addr}: i/o timeout"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_ref_defaults_port_443() {
        let s = ServiceRef::of(&json!({"spec": {"service": {"namespace": "ns", "name": "api"}}}))
            .unwrap();
        assert_eq!(s.port, 443);
        assert_eq!(s.server_name(), "api.ns.svc");
        assert!(ServiceRef::of(&json!({"spec": {"group": "x"}})).is_none());
    }

    #[test]
    fn named_ports() {
        let ports = json!([{"name": "https", "port": 8443}, {"port": 80}]);
        assert_eq!(named_port(Some(&ports), "https"), Some(8443));
        assert_eq!(named_port(Some(&ports), ""), Some(80));
        assert_eq!(named_port(Some(&ports), "other"), None);
    }
}
