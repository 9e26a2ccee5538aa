//! `kinglet token`: prints the join token (`K10<CA hash>::server:<secret>`), or replaces its
//! secret (`kinglet token rotate`). The server reads the token file on every join request, so a
//! rotation needs no restart. `create`, `list` and `delete` manage extra, expiring join tokens
//! (`K10<CA hash>::<id>.<secret>`), kept as upstream's bootstrap-token Secrets through the API.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::cli::{TokenArgs, TokenCommand};
use kinglet_apiserver::join;

pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    let ca_path = args.data_dir.join("server").join("tls").join("ca.crt");
    let ca = || {
        std::fs::read_to_string(&ca_path).with_context(|| {
            format!(
                "reading {} (has `kinglet server` run with this --data-dir?)",
                ca_path.display()
            )
        })
    };
    let path = join::token_path(&args.data_dir);
    match &args.command {
        None => println!("{}", join::token(&ca()?, &join::read_secret(&path)?)),
        Some(TokenCommand::Rotate) => {
            if join::shared_datastore_marker(&args.data_dir).exists() {
                bail!(
                    "this server shares its datastore with other servers, where the token seals the cluster's bootstrap data: it cannot be rotated on one server"
                );
            }
            let ca = ca()?;
            println!("{}", join::token(&ca, &join::write_new_secret(&path)?));
        }
        Some(TokenCommand::Create { ttl, description }) => {
            let ttl = parse_ttl(ttl)?;
            let ca = ca()?;
            let token = join::new_bootstrap_token();
            with_client(args, create(token.clone(), ttl, description.clone()))?;
            println!("K10{}::{token}", join::ca_hash(&ca));
        }
        Some(TokenCommand::List) => with_client(args, list())?,
        Some(TokenCommand::Delete { tokens }) => with_client(args, delete(tokens.clone()))?,
    }
    Ok(())
}

/// `30m`, `24h`, `7d`, `90s`; `0` for no expiry.
fn parse_ttl(s: &str) -> anyhow::Result<Option<chrono::Duration>> {
    if s == "0" {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("--ttl {s:?}: want a number and a unit (s, m, h, d), or 0"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("--ttl {s:?}: the unit must be s, m, h or d"),
    };
    Ok(Some(chrono::Duration::seconds(secs)))
}

type Fut = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// Runs `f` with the bootstrap-token Secrets of kube-system, through the admin kubeconfig.
fn with_client(args: &TokenArgs, f: impl FnOnce(kube::Api<Secret>) -> Fut) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(cfg)?;
        f(kube::Api::namespaced(client, "kube-system")).await
    })
}

fn create(
    token: String,
    ttl: Option<chrono::Duration>,
    description: Option<String>,
) -> impl FnOnce(kube::Api<Secret>) -> Fut {
    move |secrets| {
        Box::pin(async move {
            let (id, secret) = join::bootstrap_parts(&token).context("a malformed token")?;
            let mut data: BTreeMap<String, ByteString> = [
                ("token-id", id),
                ("token-secret", secret),
                ("usage-bootstrap-authentication", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
            if let Some(ttl) = ttl {
                let exp =
                    (chrono::Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                data.insert("expiration".into(), ByteString(exp.into_bytes()));
            }
            if let Some(d) = description {
                data.insert("description".into(), ByteString(d.into_bytes()));
            }
            let s = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{}{id}", join::BOOTSTRAP_TOKEN_PREFIX)),
                    ..Default::default()
                },
                type_: Some(join::BOOTSTRAP_TOKEN_TYPE.into()),
                data: Some(data),
                ..Default::default()
            };
            secrets
                .create(&Default::default(), &s)
                .await
                .context("creating the token")?;
            Ok(())
        })
    }
}

fn field(s: &Secret, k: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(k))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .unwrap_or_default()
}

fn list() -> impl FnOnce(kube::Api<Secret>) -> Fut {
    |secrets| {
        Box::pin(async move {
            let all = secrets.list(&Default::default()).await?;
            println!("{:<24} {:<8} {:<21} DESCRIPTION", "TOKEN", "TTL", "EXPIRES");
            let now = chrono::Utc::now();
            for s in all
                .items
                .iter()
                .filter(|s| s.type_.as_deref() == Some(join::BOOTSTRAP_TOKEN_TYPE))
            {
                let token = format!("{}.{}", field(s, "token-id"), field(s, "token-secret"));
                let exp = field(s, "expiration");
                let ttl = match chrono::DateTime::parse_from_rfc3339(&exp) {
                    Ok(t) if t <= now => "expired".to_string(),
                    Ok(t) => format_ttl((t.with_timezone(&chrono::Utc) - now).num_seconds()),
                    Err(_) if exp.is_empty() => "<forever>".to_string(),
                    Err(_) => "invalid".to_string(),
                };
                let exp = if exp.is_empty() {
                    "<never>".into()
                } else {
                    exp
                };
                println!("{token:<24} {ttl:<8} {exp:<21} {}", field(s, "description"));
            }
            Ok(())
        })
    }
}

/// kubectl's age style: the largest unit.
fn format_ttl(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn delete(tokens: Vec<String>) -> impl FnOnce(kube::Api<Secret>) -> Fut {
    |secrets| {
        Box::pin(async move {
            for t in tokens {
                // A whole K10 token, `<id>.<secret>`, or just the id.
                let creds = t.rsplit("::").next().unwrap_or(&t);
                let id = creds.split('.').next().unwrap_or(creds);
                let name = format!("{}{id}", join::BOOTSTRAP_TOKEN_PREFIX);
                secrets
                    .delete(&name, &Default::default())
                    .await
                    .with_context(|| format!("deleting token {id}"))?;
                println!("bootstrap token {id:?} deleted");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotation on a server sharing a datastore is refused, and leaves the token as it was.
    #[test]
    fn token_rotation_refused_on_a_shared_datastore() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("server").join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.crt"), "CA").unwrap();
        let path = join::token_path(dir.path());
        std::fs::write(&path, "s3cret\n").unwrap();
        let args = |command| TokenArgs {
            data_dir: dir.path().to_path_buf(),
            kubeconfig: dir.path().join("no-kubeconfig"),
            command,
        };
        std::fs::write(join::shared_datastore_marker(dir.path()), "").unwrap();
        let e = run(&args(Some(TokenCommand::Rotate))).unwrap_err();
        assert!(e.to_string().contains("shares its datastore"), "{e}");
        assert_eq!(join::read_secret(&path).unwrap(), "s3cret");
        // Alone: rotated.
        std::fs::remove_file(join::shared_datastore_marker(dir.path())).unwrap();
        run(&args(Some(TokenCommand::Rotate))).unwrap();
        assert_ne!(join::read_secret(&path).unwrap(), "s3cret");
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("0").unwrap(), None);
        assert_eq!(
            parse_ttl("90s").unwrap(),
            Some(chrono::Duration::seconds(90))
        );
        assert_eq!(parse_ttl("2h").unwrap(), Some(chrono::Duration::hours(2)));
        assert_eq!(parse_ttl("7d").unwrap(), Some(chrono::Duration::days(7)));
        for bad in ["", "h", "5", "5w", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
