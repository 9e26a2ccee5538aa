//! The CSR signing controller (upstream's `csrsigning`, `pkg/controller/certificates/signer`):
//! approved CertificateSigningRequests for the `kubernetes.io/kube-apiserver-client`,
//! `kube-apiserver-client-kubelet` and `kubelet-serving` signers get a certificate from the
//! cluster CA, which both the API server (client certificates) and kubelets (serving) trust.
//! A request that breaks its signer's rules gets a `Failed` condition instead. Acts as
//! upstream's `certificate-controller` ServiceAccount and writes through the `status`
//! subresource.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kinglet_pki::CertKey;
use kinglet_pki::csr::Request;
use kube::api::{Api, PostParams};

use super::informers::Shared;

/// The ServiceAccount upstream's certificate controllers act as.
pub const SERVICE_ACCOUNT: &str = "certificate-controller";

const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// Upstream's `--cluster-signing-duration` default: a year; requests may ask for less.
const DEFAULT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often every request is looked at again (signing errors are retried then).
const RESYNC: Duration = Duration::from_secs(60);

pub async fn run(client: kube::Client, ca: CertKey) {
    let (informer, watch) = Shared::<CertificateSigningRequest>::start(&client);
    // The watch ends with this loop (which is aborted when leadership is lost).
    let _watch = tokio_util::task::AbortOnDropHandle::new(watch);
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let mut changes = std::pin::pin!(informer.subscribe());
    informer.synced().await;
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            Some(csr) = changes.next() => handle(&api, &ca, &csr).await,
            _ = resync.tick() => {
                for csr in informer.state() {
                    handle(&api, &ca, &csr).await;
                }
            }
        }
    }
}

async fn handle(
    api: &Api<CertificateSigningRequest>,
    ca: &CertKey,
    csr: &CertificateSigningRequest,
) {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let Some(outcome) = decide(ca, csr, DEFAULT_TTL) else {
        return;
    };
    let mut updated = csr.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    match outcome {
        Outcome::Issue(pem) => status.certificate = Some(ByteString(pem.into_bytes())),
        Outcome::Fail(message) => status.conditions.get_or_insert_with(Vec::new).push(
            CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("SignerValidationFailure".into()),
                message: Some(message),
                last_update_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            },
        ),
        Outcome::Retry(e) => {
            tracing::warn!(csr = %name, "signing certificate request: {e}");
            return;
        }
    }
    // A conflict means a newer version is on its way through the informer.
    if let Err(e) = api
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        tracing::debug!(csr = %name, "updating certificate request status: {e}");
    }
}

/// What to do with a request.
#[derive(Debug)]
enum Outcome {
    /// The signed certificate (PEM).
    Issue(String),
    /// Refused by the signer's rules: a `Failed` condition with this message.
    Fail(String),
    /// Could not sign now (an error upstream retries).
    Retry(String),
}

/// Upstream's `handle`: only approved, not denied, not failed, not yet issued requests for a
/// signer of ours, checked against that signer's rules.
fn decide(ca: &CertKey, csr: &CertificateSigningRequest, max_ttl: Duration) -> Option<Outcome> {
    let status = csr.status.clone().unwrap_or_default();
    if status.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) {
        return None;
    }
    let conditions = status.conditions.unwrap_or_default();
    let has = |t: &str| conditions.iter().any(|c| c.type_ == t);
    let failed = conditions
        .iter()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    if !has("Approved") || has("Denied") || failed {
        return None;
    }
    let signer = csr.spec.signer_name.as_str();
    if ![KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING].contains(&signer) {
        return None;
    }
    let req = match kinglet_pki::csr::parse(&csr.spec.request.0) {
        Ok(r) => r,
        Err(e) => return Some(Outcome::Retry(format!("unable to parse csr: {e}"))),
    };
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let check = match signer {
        KUBE_APISERVER_CLIENT => client_usages(&usages),
        KUBELET_CLIENT => kubelet_client(&req, &usages),
        _ => kubelet_serving(&req, &usages),
    };
    if let Err(e) = check {
        return Some(Outcome::Fail(e));
    }
    let ttl = duration(max_ttl, csr.spec.expiration_seconds);
    Some(match kinglet_pki::csr::sign(ca, &req, &usages, ttl) {
        Ok(pem) => Outcome::Issue(pem),
        Err(e) => Outcome::Retry(format!("error auto signing csr: {e}")),
    })
}

/// The requested lifetime, between 10 minutes and the signer's maximum.
fn duration(max: Duration, expiration_seconds: Option<i32>) -> Duration {
    match expiration_seconds {
        None => max,
        Some(s) => Duration::from_secs(s.max(0) as u64).clamp(Duration::from_secs(600), max),
    }
}

fn set(usages: &[String]) -> Vec<&str> {
    let mut s: Vec<&str> = usages.iter().map(String::as_str).collect();
    s.sort();
    s.dedup();
    s
}

/// The kube-apiserver-client signer: client auth, optionally digital signature and key
/// encipherment, nothing else; any subject.
fn client_usages(usages: &[String]) -> Result<(), String> {
    if let Some(u) = usages
        .iter()
        .find(|u| !["digital signature", "key encipherment", "client auth"].contains(&u.as_str()))
    {
        return Err(format!("invalid usage for client certificate: {u}"));
    }
    if !usages.iter().any(|u| u == "client auth") {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

fn node_subject(req: &Request) -> Result<(), String> {
    if req.organizations() != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    Ok(())
}

fn node_common_name(req: &Request) -> Result<(), String> {
    if !req.common_name().starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// Upstream's `ValidateKubeletClientCSR`.
fn kubelet_client(req: &Request, usages: &[String]) -> Result<(), String> {
    node_subject(req)?;
    if !req.dns_names.is_empty() {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if !req.emails.is_empty() {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !req.ip_addresses.is_empty() {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if !req.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    node_common_name(req)?;
    let have = set(usages);
    if have != ["client auth", "digital signature", "key encipherment"]
        && have != ["client auth", "digital signature"]
    {
        return Err("usages did not match [client auth digital signature key encipherment]".into());
    }
    Ok(())
}

/// Upstream's `ValidateKubeletServingCSR`.
fn kubelet_serving(req: &Request, usages: &[String]) -> Result<(), String> {
    node_subject(req)?;
    if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if !req.emails.is_empty() {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !req.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    // One CA signs the API servers' certificates too: a node's must never carry the names
    // agents check servers by.
    if let Some(name) = req
        .dns_names
        .iter()
        .find(|d| kinglet_pki::reserved_for_api_servers(d) || d.starts_with('*'))
    {
        return Err(format!(
            "DNS subjectAltName {name:?} is reserved for API servers"
        ));
    }
    if let Some(ip) = req
        .ip_addresses
        .iter()
        .find(|ip| ip.is_loopback() || ip.is_unspecified())
    {
        return Err(format!(
            "IP subjectAltName {ip} is reserved for API servers"
        ));
    }
    let have = set(usages);
    if have != ["digital signature", "key encipherment", "server auth"]
        && have != ["digital signature", "server auth"]
    {
        return Err("usages did not match [digital signature key encipherment server auth]".into());
    }
    node_common_name(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn ca() -> CertKey {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn pem(cn: &str, org: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = org {
            dn.push(DnType::OrganizationName, o);
        }
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn csr(
        signer: &str,
        request: Vec<u8>,
        usages: &[&str],
        conditions: &[&str],
    ) -> CertificateSigningRequest {
        let mut c = CertificateSigningRequest::default();
        c.metadata.name = Some("c".into());
        c.spec.signer_name = signer.into();
        c.spec.request = ByteString(request);
        c.spec.usages = Some(usages.iter().map(|u| u.to_string()).collect());
        c.status = Some(
            k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|t| CertificateSigningRequestCondition {
                            type_: t.to_string(),
                            status: "True".into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                certificate: None,
            },
        );
        c
    }

    fn outcome(c: &CertificateSigningRequest) -> String {
        match decide(&ca(), c, DEFAULT_TTL) {
            None => "skip".into(),
            Some(Outcome::Issue(pem)) => {
                assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
                "issue".into()
            }
            Some(Outcome::Fail(m)) => format!("fail: {m}"),
            Some(Outcome::Retry(m)) => format!("retry: {m}"),
        }
    }

    #[test]
    fn signs_only_approved_requests_that_follow_their_signers_rules() {
        let client = &["digital signature", "key encipherment", "client auth"];
        let serving = &["digital signature", "server auth"];
        let node = || pem("system:node:n1", Some("system:nodes"), vec![]);
        let node_ip = || {
            pem(
                "system:node:n1",
                Some("system:nodes"),
                vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
            )
        };
        let cases: Vec<(&str, CertificateSigningRequest, &str)> = vec![
            (
                "pending",
                csr(
                    KUBE_APISERVER_CLIENT,
                    pem("jane", Some("devs"), vec![]),
                    client,
                    &[],
                ),
                "skip",
            ),
            (
                "approved client",
                csr(
                    KUBE_APISERVER_CLIENT,
                    pem("jane", Some("devs"), vec![]),
                    client,
                    &["Approved"],
                ),
                "issue",
            ),
            (
                "denied",
                csr(
                    KUBE_APISERVER_CLIENT,
                    pem("jane", None, vec![]),
                    client,
                    &["Approved", "Denied"],
                ),
                "skip",
            ),
            (
                "failed",
                csr(
                    KUBE_APISERVER_CLIENT,
                    pem("jane", None, vec![]),
                    client,
                    &["Approved", "Failed"],
                ),
                "skip",
            ),
            (
                "other signer",
                csr(
                    "example.com/mine",
                    pem("jane", None, vec![]),
                    client,
                    &["Approved"],
                ),
                "skip",
            ),
            (
                "client with server auth",
                csr(
                    KUBE_APISERVER_CLIENT,
                    pem("jane", None, vec![]),
                    &["client auth", "server auth"],
                    &["Approved"],
                ),
                "fail: invalid usage for client certificate: server auth",
            ),
            (
                "client without client auth",
                csr(
                    KUBE_APISERVER_CLIENT,
                    pem("jane", None, vec![]),
                    &["digital signature"],
                    &["Approved"],
                ),
                "fail: missing required usage for client certificate: client auth",
            ),
            (
                "kubelet client",
                csr(KUBELET_CLIENT, node(), client, &["Approved"]),
                "issue",
            ),
            (
                "kubelet client, wrong CN",
                csr(
                    KUBELET_CLIENT,
                    pem("jane", Some("system:nodes"), vec![]),
                    client,
                    &["Approved"],
                ),
                "fail: subject common name does not begin with system:node:",
            ),
            (
                "kubelet client, wrong O",
                csr(
                    KUBELET_CLIENT,
                    pem("system:node:n1", Some("devs"), vec![]),
                    client,
                    &["Approved"],
                ),
                "fail: subject organization is not system:nodes",
            ),
            (
                "kubelet client with SAN",
                csr(KUBELET_CLIENT, node_ip(), client, &["Approved"]),
                "fail: IP subjectAltNames are not allowed",
            ),
            (
                "kubelet client, serving usages",
                csr(KUBELET_CLIENT, node(), serving, &["Approved"]),
                "fail: usages did not match [client auth digital signature key encipherment]",
            ),
            (
                "kubelet serving",
                csr(KUBELET_SERVING, node_ip(), serving, &["Approved"]),
                "issue",
            ),
            (
                "kubelet serving without SAN",
                csr(KUBELET_SERVING, node(), serving, &["Approved"]),
                "fail: DNS or IP subjectAltName is required",
            ),
            (
                "kubelet serving naming an API server",
                csr(
                    KUBELET_SERVING,
                    pem(
                        "system:node:n1",
                        Some("system:nodes"),
                        vec![SanType::DnsName(
                            "kubernetes.default.svc".try_into().unwrap(),
                        )],
                    ),
                    serving,
                    &["Approved"],
                ),
                "fail: DNS subjectAltName \"kubernetes.default.svc\" is reserved for API servers",
            ),
            (
                "kubelet serving naming loopback",
                csr(
                    KUBELET_SERVING,
                    pem(
                        "system:node:n1",
                        Some("system:nodes"),
                        vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
                    ),
                    serving,
                    &["Approved"],
                ),
                "fail: IP subjectAltName 127.0.0.1 is reserved for API servers",
            ),
        ];
        let mut wrong = Vec::new();
        for (case, c, want) in cases {
            let got = outcome(&c);
            if got != want {
                wrong.push(format!("{case}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn issued_requests_are_left_alone_and_durations_are_bounded() {
        let mut c = csr(
            KUBE_APISERVER_CLIENT,
            pem("jane", None, vec![]),
            &["client auth"],
            &["Approved"],
        );
        c.status.as_mut().unwrap().certificate = Some(ByteString(b"x".to_vec()));
        assert_eq!(outcome(&c), "skip");
        let hour = Duration::from_secs(3600);
        assert_eq!(duration(DEFAULT_TTL, None), DEFAULT_TTL);
        assert_eq!(duration(DEFAULT_TTL, Some(3600)), hour);
        assert_eq!(duration(DEFAULT_TTL, Some(60)), Duration::from_secs(600));
        assert_eq!(duration(hour, Some(7200)), hour);
    }
}
