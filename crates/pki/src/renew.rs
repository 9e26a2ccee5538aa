//! `kinglet certificate check` and `rotate`: the certificates on disk with their expiry, and
//! renewing leaf certificates now (with new keys), the old ones kept in `tls-<timestamp>/`
//! as k3s keeps them. Renewal at start is [`crate::Pki::load_or_create`]'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{KeyPair, SanType};

use std::sync::Arc;

use crate::tls::LiveCert;
use crate::{CertKey, Leaf, Pki, load_pair, save_pair};

/// The names `rotate --service` takes (k3s's where they exist) and what each renews.
pub const SERVICES: &[&str] = &["admin", "api-server", "auth-proxy", "kubelet"];

/// What `service` names: server leaves, and whether the agent's kubelet certificates.
fn service_leaves(service: &str) -> Result<(Vec<Leaf>, bool)> {
    Ok(match service {
        "admin" => (vec![Leaf::Admin], false),
        "api-server" => (vec![Leaf::Serving, Leaf::KubeletClient], false),
        "auth-proxy" => (vec![Leaf::FrontProxyClient], false),
        "kubelet" => (vec![], true),
        other => anyhow::bail!(
            "unknown service {other:?}: the services are {}",
            SERVICES.join(", ")
        ),
    })
}

/// The agent's certificates the server issued at its join; without them the agent joins again.
const AGENT_KUBELET_FILES: &[&str] = &[
    "client-kubelet.crt",
    "client-kubelet.key",
    "serving-kubelet.crt",
    "serving-kubelet.key",
];

/// One certificate file.
pub struct CertInfo {
    pub file: PathBuf,
    pub subject: String,
    pub not_after: Option<time::OffsetDateTime>,
}

impl CertInfo {
    /// `OK`, `WARNING` (due for renewal) or `EXPIRED`, as k3s's `certificate check` says.
    pub fn status(&self, now: time::OffsetDateTime) -> &'static str {
        match self.not_after {
            Some(t) if t <= now => "EXPIRED",
            Some(t) if t - now >= time::Duration::days(crate::RENEW_WITHIN_DAYS) => "OK",
            _ => "WARNING",
        }
    }
}

/// The certificates under `<data_dir>/server/tls` and `<data_dir>/agent`, by file name.
pub fn check(data_dir: &Path) -> Vec<CertInfo> {
    let mut out = Vec::new();
    for dir in [data_dir.join("server").join("tls"), data_dir.join("agent")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .collect();
        files.sort();
        for file in files {
            let pem = std::fs::read_to_string(&file).unwrap_or_default();
            let subject = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .ok()
                .and_then(|(_, p)| p.parse_x509().ok().map(|c| c.subject().to_string()))
                .unwrap_or_else(|| "(unreadable)".into());
            out.push(CertInfo {
                not_after: crate::not_after(&pem),
                file,
                subject,
            });
        }
    }
    out
}

/// The SANs of a certificate, as rcgen takes them.
fn sans_of(cert_pem: &str) -> Option<Vec<SanType>> {
    Some(
        crate::cert_sans(cert_pem)?
            .into_iter()
            .filter_map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(SanType::IpAddress(ip)),
                Err(_) => s.try_into().ok().map(SanType::DnsName),
            })
            .collect(),
    )
}

/// Copies every file of `dir` into `<dir>-<timestamp>` (private), which it returns.
fn back_up(dir: &Path, stamp: i64, only: Option<&[&str]>) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tls".into());
    let backup = dir.with_file_name(format!("{name}-{stamp}"));
    let backup = match only {
        // The agent's directory holds more than certificates: its backup goes inside it.
        Some(_) => dir.join(format!("tls-{stamp}")),
        None => backup,
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&backup)
        .with_context(|| format!("creating {}", backup.display()))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(file_name) = file_name else { continue };
        if !path.is_file() || only.is_some_and(|o| !o.contains(&file_name.as_str())) {
            continue;
        }
        let data = std::fs::read(&path)?;
        crate::write_private(&backup.join(&file_name), &String::from_utf8_lossy(&data))?;
    }
    Ok(backup)
}

/// Renews the leaf certificates of `services` (all when empty) now, with new keys; the CAs
/// stay. Returns the backup directories. The server must be stopped (the caller holds its
/// lock): it reads its certificates at start.
pub fn rotate(data_dir: &Path, services: &[String]) -> Result<Vec<PathBuf>> {
    let mut leaves = Vec::new();
    let mut agent = false;
    let all: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    for s in if services.is_empty() { &all } else { services } {
        let (l, a) = service_leaves(s)?;
        leaves.extend(l);
        agent |= a;
    }
    leaves.dedup();
    let stamp = chrono::Utc::now().timestamp();
    let mut backups = Vec::new();
    let tls = data_dir.join("server").join("tls");
    let server_leaves: Vec<Leaf> = leaves
        .into_iter()
        .filter(|l| load_pair(&tls, l.file()).is_some())
        .collect();
    if !server_leaves.is_empty() {
        backups.push(back_up(&tls, stamp, None)?);
        for leaf in server_leaves {
            let ca: CertKey = load_pair(&tls, leaf.ca_file())
                .with_context(|| format!("no CA {} in {}", leaf.ca_file(), tls.display()))?;
            let old = load_pair(&tls, leaf.file());
            let sans = match leaf {
                // The names it had; the server adds any it misses at start.
                Leaf::Serving => old
                    .as_ref()
                    .and_then(|o| sans_of(&o.cert_pem))
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let renewed = leaf.issue(&ca, KeyPair::generate()?, &sans)?;
            save_pair(&tls, leaf.file(), &renewed)?;
        }
    }
    let agent_dir = data_dir.join("agent");
    if agent && agent_dir.join(AGENT_KUBELET_FILES[0]).exists() {
        backups.push(back_up(&agent_dir, stamp, Some(AGENT_KUBELET_FILES))?);
        for f in AGENT_KUBELET_FILES {
            match std::fs::remove_file(agent_dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(format!("removing {f}")),
            }
        }
    }
    anyhow::ensure!(
        !backups.is_empty(),
        "no certificates to rotate under {}",
        data_dir.display()
    );
    Ok(backups)
}

/// The certificates a running server presents, renewed in place: its serving certificate and
/// its client certificates toward kubelets and aggregated API servers.
pub struct LiveCerts {
    pub serving: Arc<LiveCert>,
    pub kubelet_client: Arc<LiveCert>,
    pub front_proxy_client: Arc<LiveCert>,
}

impl LiveCerts {
    pub fn new(pki: &Pki) -> Result<LiveCerts> {
        Ok(LiveCerts {
            serving: LiveCert::new(&pki.serving, &pki.ca.cert_pem)?,
            kubelet_client: LiveCert::new(&pki.kubelet_client, "")?,
            front_proxy_client: LiveCert::new(&pki.front_proxy_client, "")?,
        })
    }

    /// Loads the PKI of `data_dir` again, which renews what is due (see
    /// [`Pki::load_or_create`]), and presents what changed from `old` from the next handshake
    /// on. The PKI now on disk.
    pub fn refresh(&self, data_dir: &Path, sans: &[SanType], old: &Pki) -> Result<Pki> {
        let new = Pki::load_or_create(data_dir, sans)?;
        anyhow::ensure!(
            new.ca.cert_pem == old.ca.cert_pem,
            "the cluster CA changed on disk; restart kinglet to use it"
        );
        for (live, was, now, what) in [
            (&self.serving, &old.serving, &new.serving, "serving"),
            (
                &self.kubelet_client,
                &old.kubelet_client,
                &new.kubelet_client,
                "kubelet client",
            ),
            (
                &self.front_proxy_client,
                &old.front_proxy_client,
                &new.front_proxy_client,
                "front proxy client",
            ),
        ] {
            if was.cert_pem != now.cert_pem {
                let chain = if what == "serving" {
                    new.ca.cert_pem.as_str()
                } else {
                    ""
                };
                live.replace(now, chain)?;
                tracing::info!("now presenting the renewed {what} certificate");
            }
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_renews_leaves_with_new_keys_keeps_the_ca_and_backs_up() {
        let dir = tempfile::tempdir().unwrap();
        let sans = crate::serving_sans(
            "h",
            &[],
            &["edge.example".into()],
            "10.43.0.1".parse().unwrap(),
            "c.local",
        );
        let before = Pki::load_or_create(dir.path(), &sans).unwrap();
        let backups = rotate(dir.path(), &["admin".into(), "api-server".into()]).unwrap();
        assert_eq!(backups.len(), 1);
        let tls = dir.path().join("server").join("tls");
        let admin = load_pair(&tls, "client-admin").unwrap();
        assert_ne!(admin.key_pem, before.admin.key_pem);
        let serving = load_pair(&tls, "serving").unwrap();
        assert_ne!(serving.key_pem, before.serving.key_pem);
        assert!(
            crate::cert_sans(&serving.cert_pem)
                .unwrap()
                .contains(&"edge.example".to_string())
        );
        // Not named: untouched. The CA: untouched.
        let fp = load_pair(&tls, "front-proxy-client").unwrap();
        assert_eq!(fp.cert_pem, before.front_proxy_client.cert_pem);
        assert_eq!(load_pair(&tls, "ca").unwrap().cert_pem, before.ca.cert_pem);
        // The backup holds the old ones.
        assert_eq!(
            std::fs::read_to_string(backups[0].join("client-admin.crt")).unwrap(),
            before.admin.cert_pem
        );
        // A restart keeps what rotate made (it is fresh and names every wanted SAN).
        let after = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(after.admin.cert_pem, admin.cert_pem);
        assert_eq!(after.serving.cert_pem, serving.cert_pem);
        assert!(rotate(dir.path(), &["nonsense".into()]).is_err());
        let listed = check(dir.path());
        assert!(listed.iter().any(|c| c.file.ends_with("client-admin.crt")
            && c.subject.contains("system:admin")
            && c.status(time::OffsetDateTime::now_utc()) == "OK"));
    }

    /// A certificate of `pair`'s key by `ca` that expires in 30 days.
    fn expiring(ca: &CertKey, pair: &CertKey) -> CertKey {
        let ca_key = KeyPair::from_pem(&ca.key_pem).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let k = KeyPair::from_pem(&pair.key_pem).unwrap();
        CertKey {
            cert_pem: params.signed_by(&k, &issuer).unwrap().pem(),
            key_pem: pair.key_pem.clone(),
        }
    }

    #[test]
    fn a_running_server_presents_renewed_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let sans = crate::serving_sans("h", &[], &[], "10.43.0.1".parse().unwrap(), "c.local");
        let tls = dir.path().join("server").join("tls");
        // What the server started with, due for renewal since.
        let mut started = Pki::load_or_create(dir.path(), &sans).unwrap();
        started.serving = expiring(&started.ca, &started.serving);
        started.kubelet_client = expiring(&started.ca, &started.kubelet_client);
        save_pair(&tls, "serving", &started.serving).unwrap();
        save_pair(&tls, "client-kubelet", &started.kubelet_client).unwrap();
        let live = LiveCerts::new(&started).unwrap();
        let der = |pem: &str| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let fp_before = live.front_proxy_client.current();
        let now = live.refresh(dir.path(), &sans, &started).unwrap();
        assert!(!crate::due_for_renewal(
            &now.serving.cert_pem,
            time::OffsetDateTime::now_utc()
        ));
        assert_eq!(live.serving.current(), der(&now.serving.cert_pem));
        assert_eq!(
            live.kubelet_client.current(),
            der(&now.kubelet_client.cert_pem)
        );
        assert_ne!(live.serving.current(), der(&started.serving.cert_pem));
        assert_eq!(live.front_proxy_client.current(), fp_before);
        // A refresh with nothing due changes nothing.
        let again = live.refresh(dir.path(), &sans, &now).unwrap();
        assert_eq!(again.serving.cert_pem, now.serving.cert_pem);
    }

    #[test]
    fn load_renews_leaves_due_for_renewal_keeping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let sans = crate::serving_sans("h", &[], &[], "10.43.0.1".parse().unwrap(), "c.local");
        let first = Pki::load_or_create(dir.path(), &sans).unwrap();
        let tls = dir.path().join("server").join("tls");
        // Replace the admin certificate with one expiring in 30 days, same key.
        let ca_key = KeyPair::from_pem(&first.ca.key_pem).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&first.ca.cert_pem, ca_key).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let k = KeyPair::from_pem(&first.admin.key_pem).unwrap();
        let short = CertKey {
            cert_pem: params.signed_by(&k, &issuer).unwrap().pem(),
            key_pem: first.admin.key_pem.clone(),
        };
        save_pair(&tls, "client-admin", &short).unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert!(crate::due_for_renewal(&short.cert_pem, now));
        let second = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_ne!(second.admin.cert_pem, short.cert_pem);
        assert_eq!(second.admin.key_pem, first.admin.key_pem);
        assert!(!crate::due_for_renewal(&second.admin.cert_pem, now));
        assert_eq!(second.ca.cert_pem, first.ca.cert_pem);
        assert_eq!(second.serving.cert_pem, first.serving.cert_pem);
    }
}
