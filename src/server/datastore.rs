//! Servers sharing one datastore, as k3s's: the files every server of the cluster must hold
//! alike (`kinglet_pki::bootstrap`) travel through the datastore, encrypted with the server
//! token. The first server puts them there after making its CAs; a server joining with
//! `--token` takes them before its PKI loads, then issues its own certificates.

use std::path::Path;

use anyhow::{Context, bail};
use kinglet_apiserver::join;
use kinglet_pki::bootstrap::{self, CA_CERT, ENCRYPTION_CONFIG, Files, KEY_PREFIX, storage_key};
use kinglet_store::{Store, StoreError};

/// What a server starts with, for the bootstrap data.
pub(crate) struct Start<'a> {
    pub data_dir: &'a Path,
    /// `--token`: the server token.
    pub token: Option<&'a str>,
    /// `--server`: a server of the cluster to check the CA with.
    pub server: Option<&'a str>,
    /// `--secrets-encryption`.
    pub secrets_encryption: bool,
}

/// Brings the data directory and the datastore's bootstrap data into agreement, before the PKI
/// loads. Errors leave the data directory as it was (apart from a first server's new CAs).
pub(crate) async fn sync(store: &Store, start: &Start<'_>) -> anyhow::Result<()> {
    let data_dir = start.data_dir;
    let token_path = join::token_path(data_dir);
    let local_secret = match token_path.exists() {
        true => Some(join::read_secret(&token_path)?),
        false => None,
    };
    let (token_hash, given) = match start.token.map(parse_token).transpose()? {
        Some((hash, secret)) => (hash, Some(secret)),
        None => (None, None),
    };
    if let (Some(local), Some(given)) = (&local_secret, &given)
        && local != given
    {
        bail!(
            "--token is not this server's token (in {}): a data directory stays with its cluster",
            token_path.display()
        );
    }
    let marker = join::shared_datastore_marker(data_dir);
    if !store.is_shared() {
        // A server alone: `--token` only chooses its token.
        if let (None, Some(given)) = (&local_secret, &given) {
            write_token(&token_path, given)?;
        }
        if marker.exists() {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing {}", marker.display()))?;
        }
        return Ok(());
    }
    sync_shared(store, start, token_hash.as_deref(), given, local_secret).await?;
    // `kinglet token rotate` must not re-key this server alone: the token seals the cluster's
    // bootstrap data in the datastore.
    std::fs::write(&marker, "").with_context(|| format!("writing {}", marker.display()))
}

/// `--token`: a join token (`K10<CA hash>::server:<secret>`, as `kinglet token` prints it;
/// its CA hash and secret) or just the secret.
fn parse_token(token: &str) -> anyhow::Result<(Option<String>, String)> {
    let token = token.trim();
    if token.starts_with("K10") {
        let parsed = crate::agent::Token::parse(token).context("--token")?;
        return Ok((Some(parsed.ca_hash), parsed.secret));
    }
    anyhow::ensure!(!token.is_empty(), "--token holds no secret");
    Ok((None, token.to_string()))
}

/// [`sync`] with a datastore other servers may share.
async fn sync_shared(
    store: &Store,
    start: &Start<'_>,
    token_hash: Option<&str>,
    given: Option<String>,
    local_secret: Option<String>,
) -> anyhow::Result<()> {
    let data_dir = start.data_dir;
    let token_path = join::token_path(data_dir);
    let served_ca = match start.server {
        Some(url) => Some(served_ca(url).await?),
        None => None,
    };
    let had_ca = data_dir.join(CA_CERT).exists();
    let pass = given.or(local_secret);
    let remote = match &pass {
        Some(p) => read_remote(store, p).await?,
        None => None,
    };
    if let Some(remote) = remote {
        return adopt(start, token_hash, served_ca.as_deref(), &remote, false);
    }
    // No bootstrap data for this token.
    if !store
        .list(KEY_PREFIX, 0, None, Some(1))
        .await?
        .items
        .is_empty()
    {
        bail!(
            "the datastore holds a cluster whose bootstrap data this server's token does not open: start with that cluster's --token (`kinglet token` on one of its servers)"
        );
    }
    if start.server.is_some() {
        bail!(
            "the datastore holds no cluster yet: start its first server without --server, then join with --server and --token"
        );
    }
    if let Some(hash) = token_hash {
        let local_ca = std::fs::read_to_string(data_dir.join(CA_CERT)).unwrap_or_default();
        if !had_ca || join::ca_hash(&local_ca) != hash {
            bail!(
                "--token names a cluster CA the datastore does not hold: give the first server just the token's secret"
            );
        }
    }
    // One server makes the cluster: the first to claim the datastore for its token's key.
    // Two first servers started together (each with a token of its own made up) must not
    // both store a cluster.
    let pass = pass.unwrap_or_else(join::new_secret);
    let key = storage_key(&pass);
    match store
        .create(OWNER_KEY, key.clone().into_bytes().into())
        .await
    {
        Ok(_) => {}
        Err(StoreError::AlreadyExists) => {
            let owner = store
                .get(OWNER_KEY)
                .await
                .context("reading the datastore's cluster claim")?
                .context("the datastore's cluster claim went away while starting")?;
            // The same token (a server started with it at the same time, or this one
            // restarting after a failed start) stores under the same key: the first store wins
            // below.
            if owner.value.as_ref() != key.as_bytes() {
                bail!(
                    "another server is making the datastore's cluster, with another token: start with that cluster's --token (`kinglet token` on that server); if no server of it ever started, delete the claim (`etcdctl del {OWNER_KEY}`)"
                );
            }
        }
        Err(e) => bail!("claiming the datastore for this cluster: {e}"),
    }
    // The first server: its files become the cluster's.
    kinglet_pki::ensure_shared(data_dir).context("setting up the cluster PKI")?;
    if !token_path.exists() {
        write_token(&token_path, &pass)?;
    }
    crate::secrets_encrypt::server_config(data_dir, start.secrets_encryption)
        .context("setting up secrets encryption")?;
    let sealed = bootstrap::encrypt(&pass, &Files::read(data_dir)?.to_json())?;
    match store.create(&key, sealed.into()).await {
        Ok(_) => {
            tracing::info!("stored the cluster's bootstrap data in the datastore");
            Ok(())
        }
        Err(StoreError::AlreadyExists) => {
            // Another first server with this token was quicker: its files win over ours, made
            // just now.
            let remote = read_remote(store, &pass)
                .await?
                .context("the bootstrap data went away while starting")?;
            adopt(start, token_hash, served_ca.as_deref(), &remote, !had_ca)
        }
        Err(e) => bail!("storing the bootstrap data: {e}"),
    }
}

/// The claim of the server making the datastore's cluster: the storage key of its bootstrap
/// data, created only if absent.
const OWNER_KEY: &str = "/kinglet/bootstrap-owner";

fn write_token(path: &Path, secret: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    kinglet_pki::write_private(path, &format!("{secret}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// The bootstrap data sealed with `pass`, if any; an error when it does not open.
async fn read_remote(store: &Store, pass: &str) -> anyhow::Result<Option<Files>> {
    let Some(rec) = store
        .get(&storage_key(pass))
        .await
        .context("reading the bootstrap data")?
    else {
        return Ok(None);
    };
    let plain = bootstrap::decrypt(pass, &rec.value)?;
    Ok(Some(Files::from_json(&plain)?))
}

/// Takes the cluster's files: checks them against the token, `--server` and the data
/// directory, then writes the missing ones (all of them with `replace`).
fn adopt(
    start: &Start<'_>,
    token_hash: Option<&str>,
    served_ca: Option<&str>,
    remote: &Files,
    replace: bool,
) -> anyhow::Result<()> {
    let remote_ca = remote
        .get(CA_CERT)
        .context("the datastore's bootstrap data has no cluster CA")?;
    if let Some(hash) = token_hash
        && join::ca_hash(&String::from_utf8_lossy(remote_ca)) != hash
    {
        bail!("the --token's CA hash does not match the datastore's cluster CA");
    }
    if let Some(ca) = served_ca
        && ca.as_bytes() != remote_ca
    {
        bail!(
            "{} serves another CA than the datastore's cluster",
            start.server.unwrap_or_default()
        );
    }
    let local = Files::read(start.data_dir)?;
    if !replace {
        let differing = local.differing(remote);
        if !differing.is_empty() {
            bail!(
                "{} holds {} unlike the datastore's cluster (another cluster's data directory?); nothing was changed",
                start.data_dir.display(),
                differing.join(", ")
            );
        }
    }
    let encrypting = start.secrets_encryption || local.get(ENCRYPTION_CONFIG).is_some();
    if remote.get(ENCRYPTION_CONFIG).is_none() && encrypting {
        bail!(
            "the cluster's bootstrap data has no secrets-encryption key: on servers sharing a datastore, --secrets-encryption is given to the first server of a new cluster"
        );
    }
    let written = remote.write(start.data_dir, replace)?;
    if !written.is_empty() {
        tracing::info!(files = ?written, "took the cluster's bootstrap data from the datastore");
    }
    Ok(())
}

/// The CA a server of the cluster serves at `/cacerts` (not yet trusted: the caller checks it).
async fn served_ca(url: &str) -> anyhow::Result<String> {
    let server = crate::agent::ServerUrl::parse(url).with_context(|| format!("--server {url}"))?;
    crate::agent::fetch_ca(&server)
        .await
        .with_context(|| format!("--server {url}"))
}

/// Where the settings every server of a cluster must share are kept (plain JSON: no secret).
const CLUSTER_SETTINGS_KEY: &str = "/kinglet/bootstrap-settings";

/// Checks that this server's cluster-wide settings (flag name -> value) are the cluster's, as
/// k3s refuses a server whose critical settings differ, if the cluster has recorded them.
/// Before [`sync`], so a server refused writes nothing.
pub(crate) async fn check_settings(
    store: &Store,
    settings: &[(&str, String)],
) -> anyhow::Result<()> {
    if !store.is_shared() {
        return Ok(());
    }
    match store.get(CLUSTER_SETTINGS_KEY).await? {
        Some(recorded) => compare_settings(&settings_map(settings), &recorded.value),
        None => Ok(()),
    }
}

/// Records this server's cluster-wide settings as the cluster's if none are yet (the first
/// server, once its bootstrap data is in the datastore or taken from it, so a server that
/// fails before records nothing), else checks them as [`check_settings`] does.
pub(crate) async fn record_settings(
    store: &Store,
    settings: &[(&str, String)],
) -> anyhow::Result<()> {
    if !store.is_shared() {
        return Ok(());
    }
    let mine = settings_map(settings);
    match store
        .create(CLUSTER_SETTINGS_KEY, serde_json::to_vec(&mine)?.into())
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists) => {
            let recorded = store
                .get(CLUSTER_SETTINGS_KEY)
                .await?
                .context("the cluster's settings went away while starting")?;
            compare_settings(&mine, &recorded.value)
        }
        Err(e) => bail!("recording the cluster's settings: {e}"),
    }
}

fn settings_map(settings: &[(&str, String)]) -> serde_json::Map<String, serde_json::Value> {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect()
}

fn compare_settings(
    mine: &serde_json::Map<String, serde_json::Value>,
    recorded: &[u8],
) -> anyhow::Result<()> {
    let theirs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(recorded).context("the cluster's settings are malformed")?;
    let differing: Vec<String> = mine
        .iter()
        .filter_map(|(k, v)| {
            let t = theirs.get(k)?;
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (t != v).then(|| format!("--{k} {} (the cluster's: {})", text(v), text(t)))
        })
        .collect();
    if !differing.is_empty() {
        bail!(
            "this server's settings differ from the cluster's: {}",
            differing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start<'a>(dir: &'a Path, token: Option<&'a str>) -> Start<'a> {
        Start {
            data_dir: dir,
            token,
            server: None,
            secrets_encryption: false,
        }
    }

    #[test]
    fn tokens_give_their_secret_and_ca_hash() {
        let hash = "ab".repeat(32);
        assert_eq!(parse_token("plain").unwrap(), (None, "plain".into()));
        for token in [format!("K10{hash}::node:x"), format!("K10{hash}::x")] {
            assert_eq!(
                parse_token(&token).unwrap(),
                (Some(hash.clone()), "x".into())
            );
        }
        let upper = format!("K10{}::server:x", hash.to_uppercase());
        assert_eq!(parse_token(&upper).unwrap().0, Some(hash));
        assert!(parse_token("K10abc::server:x").is_err());
        assert!(parse_token("  ").is_err());
    }

    /// What `sync` does against a shared datastore (an etcd cluster in production; these
    /// tests need `Store::is_shared`, so they run in tests/datastore.rs against etcd) is
    /// covered there; here, a server alone: `--token` only names its token.
    #[tokio::test]
    async fn a_server_alone_takes_its_token_from_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        sync(&store, &start(dir.path(), Some("K10abc::server:s3cret")))
            .await
            .unwrap_err();
        sync(&store, &start(dir.path(), Some("s3cret")))
            .await
            .unwrap();
        assert_eq!(
            join::read_secret(&join::token_path(dir.path())).unwrap(),
            "s3cret"
        );
        let e = sync(&store, &start(dir.path(), Some("other")))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not this server's token"), "{e}");
        assert!(store.get(&storage_key("s3cret")).await.unwrap().is_none());
    }
}
