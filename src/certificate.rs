//! `kinglet certificate check|rotate`, as k3s's `certificate` command: the certificates on
//! disk with their expiry, and renewing the leaf certificates now with the server stopped.
//! Renewal of leaves due within 90 days also happens by itself at every server start.

use crate::cli::{CertificateArgs, CertificateCommand};

pub fn run(args: &CertificateArgs) -> anyhow::Result<()> {
    match &args.command {
        CertificateCommand::Check => check(args),
        CertificateCommand::Rotate { services } => rotate(args, services),
    }
}

fn check(args: &CertificateArgs) -> anyhow::Result<()> {
    let certs = kinglet_pki::renew::check(&args.data_dir);
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificates under {}",
        args.data_dir.display()
    );
    let now = time::OffsetDateTime::now_utc();
    let rows: Vec<[String; 5]> = certs
        .iter()
        .map(|c| {
            let (expires, left) = match c.not_after {
                Some(t) => (t.date().to_string(), format!("{}d", (t - now).whole_days())),
                None => ("-".into(), "-".into()),
            };
            [
                c.file
                    .strip_prefix(&args.data_dir)
                    .unwrap_or(&c.file)
                    .display()
                    .to_string(),
                c.subject.clone(),
                expires,
                left,
                c.status(now).to_string(),
            ]
        })
        .collect();
    let header = ["FILENAME", "SUBJECT", "EXPIRES", "RESIDUAL TIME", "STATUS"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

fn rotate(args: &CertificateArgs, services: &[String]) -> anyhow::Result<()> {
    // The server and agent read their certificates at start: they must be stopped.
    let mut held = Vec::new();
    for (dir, what) in [("server", "the server"), ("agent", "the agent")] {
        let dir = args.data_dir.join(dir);
        if dir.is_dir() {
            held.push(
                kinglet_core::lockfile::hold_alone(&dir.join("lock"), &format!("{what}'s data"))
                    .map_err(|e| e.context("stop kinglet before rotating certificates"))?,
            );
        }
    }
    for backup in kinglet_pki::renew::rotate(&args.data_dir, services)? {
        println!("old certificates kept in {}", backup.display());
    }
    println!(
        "certificates rotated; start kinglet to use them (the server rewrites its kubeconfig)"
    );
    Ok(())
}

/// What a running server needs to renew its certificates.
pub(crate) struct Renewal {
    pub live: kinglet_pki::renew::LiveCerts,
    /// The PKI as the server loaded it.
    pub pki: kinglet_pki::Pki,
    pub data_dir: std::path::PathBuf,
    pub sans: Vec<rcgen::SanType>,
    /// The admin kubeconfig, its server URL and file mode.
    pub kubeconfig: std::path::PathBuf,
    pub url: String,
    pub mode: u32,
}

/// How often a running server checks its certificates.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Once a day, renews the leaf certificates due (as a start would): the API server presents
/// the new serving and client certificates from the next handshake on and rewrites the admin
/// kubeconfig, without a restart.
pub(crate) fn spawn_renewal(r: Renewal) {
    tokio::spawn(async move {
        let mut pki = r.pki;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            // Key generation and file writes: off the async workers' hot path.
            let refreshed =
                tokio::task::block_in_place(|| r.live.refresh(&r.data_dir, &r.sans, &pki));
            match refreshed {
                Ok(new) => {
                    if new.admin.cert_pem != pki.admin.cert_pem {
                        match new.write_kubeconfig(&r.kubeconfig, &r.url, r.mode) {
                            Ok(()) => tracing::info!(
                                kubeconfig = %r.kubeconfig.display(),
                                "wrote the renewed admin certificate"
                            ),
                            Err(e) => tracing::warn!(
                                "writing {} with the renewed admin certificate: {e:#}",
                                r.kubeconfig.display()
                            ),
                        }
                    }
                    pki = new;
                }
                Err(e) => tracing::warn!("renewing certificates: {e:#}"),
            }
        }
    });
}
