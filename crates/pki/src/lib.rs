//! The cluster PKI: a CA made on first start, the API server's serving certificate, client
//! certificates, the service-account signing key, and the admin kubeconfig.
//!
//! Everything lives under `<data-dir>/server/tls` and is reused on restart; the serving
//! certificate is re-issued (by the same CA) when the wanted SANs are not all in it, and every
//! leaf certificate is renewed, with its key, when it expires within [`RENEW_WITHIN_DAYS`]
//! (k3s's rule). The CAs are never renewed.

pub mod bootstrap;
pub mod csr;
pub mod identity;
pub mod renew;
pub mod tls;

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// PEM certificate and key.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster's PKI material, loaded or created.
pub struct Pki {
    pub ca: CertKey,
    pub serving: CertKey,
    pub admin: CertKey,
    /// The API server's identity towards kubelets.
    pub kubelet_client: CertKey,
    /// A CA of its own for the aggregation layer's front proxy, so that no client certificate
    /// of the cluster CA (which approved CSRs can yield) can assert identities to aggregated
    /// servers, as upstream's `--requestheader-client-ca-file`.
    pub front_proxy_ca: CertKey,
    /// The front proxy's identity (`front-proxy-client`), signed by `front_proxy_ca`; it has no
    /// rights on the API server, whose client CA is the cluster CA.
    pub front_proxy_client: CertKey,
    /// PEM (PKCS#8, P-256) key that signs service-account tokens.
    pub sa_key_pem: String,
}

const VALID_DAYS: i64 = 3650;

/// Leaf certificates that expire within this many days are renewed at start (k3s's rule).
pub const RENEW_WITHIN_DAYS: i64 = 90;

/// The certificate's expiry (`notAfter`); `None` when it cannot be read.
pub fn not_after(cert_pem: &str) -> Option<time::OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// Whether the certificate is due for renewal: it expires within [`RENEW_WITHIN_DAYS`] days
/// of `now`, or cannot be read.
pub fn due_for_renewal(cert_pem: &str, now: time::OffsetDateTime) -> bool {
    not_after(cert_pem).is_none_or(|t| t - now < time::Duration::days(RENEW_WITHIN_DAYS))
}

/// Whether `pair` can be kept: not due for renewal.
fn fresh(pair: &CertKey) -> bool {
    !due_for_renewal(&pair.cert_pem, time::OffsetDateTime::now_utc())
}

/// Writes a file only its owner may read, atomically (keys, tokens).
pub fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

/// The user the API server's client certificate toward kubelets names.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// The name in the front proxy's certificate, which aggregated servers allow.
pub const FRONT_PROXY_CLIENT_USER: &str = "front-proxy-client";

fn names_masters(pair: &CertKey) -> bool {
    x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| crate::identity::user_from_cert(&pem.contents))
        .is_none_or(|u| u.groups.iter().any(|g| g == "system:masters"))
}

fn load_pair(dir: &Path, name: &str) -> Option<CertKey> {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some(CertKey { cert_pem, key_pem })
}

fn save_pair(dir: &Path, name: &str, pair: &CertKey) -> Result<()> {
    write_private(&dir.join(format!("{name}.key")), &pair.key_pem)?;
    write_private(&dir.join(format!("{name}.crt")), &pair.cert_pem)
}

fn new_ca(name: &str) -> Result<CertKey> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{name}@{}", chrono::Utc::now().timestamp()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a leaf certificate signed by `ca`.
pub fn issue(
    ca: &CertKey,
    cn: &str,
    orgs: &[&str],
    sans: &[SanType],
    server: bool,
    client: bool,
) -> Result<CertKey> {
    issue_with_key(ca, KeyPair::generate()?, cn, orgs, sans, server, client)
}

/// A new certificate for the key of `old` (renewal keeps the key, as k3s does), or for a new
/// key when `old`'s cannot be read.
fn renew_key(old: Option<&CertKey>) -> Result<KeyPair> {
    match old.and_then(|o| KeyPair::from_pem(&o.key_pem).ok()) {
        Some(k) => Ok(k),
        None => Ok(KeyPair::generate()?),
    }
}

/// Issues a leaf certificate for `key`, signed by `ca`.
fn issue_with_key(
    ca: &CertKey,
    key: KeyPair,
    cn: &str,
    orgs: &[&str],
    sans: &[SanType],
    server: bool,
    client: bool,
) -> Result<CertKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = sans.to_vec();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if client {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    // Never past the CA's own expiry: a leaf renewed late in the CA's life would otherwise
    // claim a validity its chain does not have.
    if let Some(ca_end) = not_after(&ca.cert_pem) {
        params.not_after = params.not_after.min(ca_end);
    }
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The SANs the serving certificate must carry.
/// A name every API server's serving certificate carries and no node's may (the join refuses
/// node names starting with `kubernetes`): what agents verify a server they reach by address
/// for.
pub const API_SERVER_NAME: &str = "kubernetes.default.svc";

/// Whether the DNS name `dns` is one only API servers' certificates may carry: `localhost`
/// and the `kubernetes*` names (so never a node's serving certificate, which the same CA
/// signs).
pub fn reserved_for_api_servers(dns: &str) -> bool {
    let dns = dns.trim_end_matches('.').to_ascii_lowercase();
    dns == "localhost" || dns.starts_with("kubernetes")
}

pub fn serving_sans(
    hostname: &str,
    addresses: &[IpAddr],
    extra: &[String],
    service_ip: IpAddr,
    domain: &str,
) -> Vec<SanType> {
    let mut names: Vec<String> = vec![
        "localhost".into(),
        hostname.into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        API_SERVER_NAME.into(),
        format!("{API_SERVER_NAME}.{domain}"),
    ];
    let mut ips: Vec<IpAddr> = vec![
        "127.0.0.1".parse().unwrap_or(service_ip),
        "::1".parse().unwrap_or(service_ip),
        service_ip,
    ];
    ips.extend(addresses.iter().copied());
    for e in extra {
        match e.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(e.clone()),
        }
    }
    names.sort();
    names.dedup();
    ips.sort();
    ips.dedup();
    let mut sans: Vec<SanType> = names
        .into_iter()
        .filter_map(|n| n.try_into().ok().map(SanType::DnsName))
        .collect();
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans
}

/// The SANs present in a PEM certificate, as strings.
fn cert_sans(cert_pem: &str) -> Option<Vec<String>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let ext = cert.subject_alternative_name().ok()??;
    Some(
        ext.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                    16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
    )
}

fn san_string(s: &SanType) -> String {
    match s {
        SanType::DnsName(d) => d.as_str().to_string(),
        SanType::IpAddress(ip) => ip.to_string(),
        other => format!("{other:?}"),
    }
}

/// A CA from `dir`, made if missing; whether it was just made (what it signed before is then
/// void).
fn load_or_new_ca(dir: &Path, file: &str, name: &str) -> Result<(CertKey, bool)> {
    match load_pair(dir, file) {
        Some(ca) => Ok((ca, false)),
        None => {
            let ca = new_ca(name)?;
            save_pair(dir, file, &ca)?;
            Ok((ca, true))
        }
    }
}

/// The server's leaf certificates (file name under `server/tls`, without `.crt`/`.key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// The API server's serving certificate.
    Serving,
    /// The admin kubeconfig's client certificate.
    Admin,
    /// The API server's client certificate toward kubelets.
    KubeletClient,
    /// The aggregation layer's front proxy client certificate (signed by the front proxy CA).
    FrontProxyClient,
}

impl Leaf {
    pub const ALL: [Leaf; 4] = [
        Leaf::Serving,
        Leaf::Admin,
        Leaf::KubeletClient,
        Leaf::FrontProxyClient,
    ];

    pub fn file(self) -> &'static str {
        match self {
            Leaf::Serving => "serving",
            Leaf::Admin => "client-admin",
            Leaf::KubeletClient => "client-kubelet",
            Leaf::FrontProxyClient => "front-proxy-client",
        }
    }

    /// The CA (file name) that signs it.
    pub fn ca_file(self) -> &'static str {
        match self {
            Leaf::FrontProxyClient => "front-proxy-ca",
            _ => "ca",
        }
    }

    /// A certificate for `key`: the serving one names `sans`, the client ones none.
    fn issue(self, ca: &CertKey, key: KeyPair, sans: &[SanType]) -> Result<CertKey> {
        match self {
            Leaf::Serving => issue_with_key(ca, key, "kube-apiserver", &[], sans, true, false),
            Leaf::Admin => issue_with_key(
                ca,
                key,
                "system:admin",
                &["system:masters"],
                &[],
                false,
                true,
            ),
            Leaf::KubeletClient => {
                issue_with_key(ca, key, KUBELET_CLIENT_USER, &[], &[], false, true)
            }
            Leaf::FrontProxyClient => {
                issue_with_key(ca, key, FRONT_PROXY_CLIENT_USER, &[], &[], false, true)
            }
        }
    }
}

/// A client leaf from `dir` when it is `usable` and not due for renewal; else renewed (with its
/// key) or made, and saved.
fn keep_or_renew(
    dir: &Path,
    ca: &CertKey,
    leaf: Leaf,
    usable: impl Fn(&CertKey) -> bool,
) -> Result<CertKey> {
    let stored = load_pair(dir, leaf.file());
    match stored {
        Some(p) if usable(&p) && fresh(&p) => Ok(p),
        old => {
            // A certificate of another identity (or of a replaced CA) gets a new key too.
            let key = renew_key(old.as_ref().filter(|p| usable(p)))?;
            let p = leaf.issue(ca, key, &[])?;
            if old.is_some() {
                tracing::info!(
                    certificate = leaf.file(),
                    "renewed a certificate due to expire"
                );
            }
            save_pair(dir, leaf.file(), &p)?;
            Ok(p)
        }
    }
}

/// Creates the files every server of a cluster shares, where missing (the CAs and the
/// service-account key, no leaf certificate): what a first server puts in the datastore's
/// bootstrap data before issuing its own certificates.
pub fn ensure_shared(data_dir: &Path) -> Result<()> {
    let dir = data_dir.join("server").join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    load_or_new_ca(&dir, "ca", "kinglet-ca")?;
    load_or_new_ca(&dir, "front-proxy-ca", "kinglet-front-proxy-ca")?;
    sa_key(&dir)?;
    Ok(())
}

/// The service-account signing key, made if missing.
fn sa_key(dir: &Path) -> Result<String> {
    let sa_path = dir.join("service-account.key");
    match std::fs::read_to_string(&sa_path) {
        Ok(k) => Ok(k),
        Err(_) => {
            let k = KeyPair::generate()?.serialize_pem();
            write_private(&sa_path, &k)?;
            Ok(k)
        }
    }
}

impl Pki {
    /// Loads the PKI under `<data_dir>/server/tls`, creating what is missing.
    pub fn load_or_create(data_dir: &Path, sans: &[SanType]) -> Result<Pki> {
        let dir = data_dir.join("server").join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca, _) = load_or_new_ca(&dir, "ca", "kinglet-ca")?;
        let wanted: Vec<String> = sans.iter().map(san_string).collect();
        let stored = load_pair(&dir, "serving");
        let serving = match stored {
            Some(s)
                if fresh(&s)
                    && cert_sans(&s.cert_pem)
                        .is_some_and(|have| wanted.iter().all(|w| have.contains(w))) =>
            {
                s
            }
            old => {
                if old.is_some() {
                    tracing::info!("re-issued the serving certificate (names or expiry)");
                }
                let s = Leaf::Serving.issue(&ca, renew_key(old.as_ref())?, sans)?;
                save_pair(&dir, "serving", &s)?;
                s
            }
        };
        let admin = keep_or_renew(&dir, &ca, Leaf::Admin, |_| true)?;
        // The API server's identity toward kubelets: bound to `system:kubelet-api-admin`, not
        // an admin (certificates of older data directories named `system:masters`: reissued).
        let kubelet_client = keep_or_renew(&dir, &ca, Leaf::KubeletClient, |p| !names_masters(p))?;
        let (front_proxy_ca, new_front_proxy_ca) =
            load_or_new_ca(&dir, "front-proxy-ca", "kinglet-front-proxy-ca")?;
        let front_proxy_client =
            keep_or_renew(&dir, &front_proxy_ca, Leaf::FrontProxyClient, |_| {
                !new_front_proxy_ca
            })?;
        let sa_key_pem = sa_key(&dir)?;
        Ok(Pki {
            ca,
            serving,
            admin,
            kubelet_client,
            front_proxy_ca,
            front_proxy_client,
            sa_key_pem,
        })
    }

    /// A kubeconfig for `server` (URL) authenticating with `client`.
    pub fn kubeconfig(&self, server: &str, client: &CertKey) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: default\n\
             contexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\n\
             users:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&self.ca.cert_pem),
            server,
            b64(&client.cert_pem),
            b64(&client.key_pem)
        )
    }

    /// Writes the admin kubeconfig to `path` with file mode `mode`.
    pub fn write_kubeconfig(&self, path: &Path, server: &str, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(path, &self.kubeconfig(server, &self.admin))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_never_outlive_their_ca() {
        // A CA in the last days of its life.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_end = time::OffsetDateTime::now_utc() + time::Duration::days(10);
        params.not_after = ca_end;
        let ca = CertKey {
            cert_pem: params.self_signed(&key).unwrap().pem(),
            key_pem: key.serialize_pem(),
        };
        let leaf = issue_with_key(
            &ca,
            KeyPair::generate().unwrap(),
            "x",
            &[],
            &[],
            false,
            true,
        )
        .unwrap();
        assert!(not_after(&leaf.cert_pem).unwrap() <= not_after(&ca.cert_pem).unwrap());
        assert!(not_after(&leaf.cert_pem).unwrap() - ca_end < time::Duration::seconds(1));
    }

    #[test]
    fn create_then_reuse_and_reissue_on_new_san() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.43.0.1".parse().unwrap();
        let sans = serving_sans("host1", &[], &[], ip, "cluster.local");
        let a = Pki::load_or_create(dir.path(), &sans).unwrap();
        let b = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
        assert_eq!(a.serving.cert_pem, b.serving.cert_pem);
        assert_eq!(a.sa_key_pem, b.sa_key_pem);
        let have = cert_sans(&a.serving.cert_pem).unwrap();
        for want in [
            "kubernetes.default.svc.cluster.local",
            "10.43.0.1",
            "host1",
            "127.0.0.1",
        ] {
            assert!(
                have.iter().any(|h| h == want),
                "{want} missing from {have:?}"
            );
        }
        let more = serving_sans("host1", &[], &["edge.example".into()], ip, "cluster.local");
        let c = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_eq!(a.ca.cert_pem, c.ca.cert_pem);
        assert_ne!(a.serving.cert_pem, c.serving.cert_pem);
        assert!(
            cert_sans(&c.serving.cert_pem)
                .unwrap()
                .contains(&"edge.example".to_string())
        );
    }
}
