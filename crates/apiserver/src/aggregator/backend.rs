//! TLS towards an APIService's server (reached through `service_backend`): checked against the
//! APIService's `caBundle` for `<service>.<namespace>.svc`, and the front proxy's certificate
//! (its own CA, see `kinglet_pki::Pki::front_proxy_ca`) as the proxy's identity.

use std::sync::Arc;

use serde_json::Value;

use crate::Api;

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
        let roots = crate::service_backend::ca_bundle_roots(b64, "spec.caBundle")?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("spec.caBundle: {e}"))?;
        config.dangerous().set_certificate_verifier(verifier);
    }
    Ok(Arc::new(config))
}
