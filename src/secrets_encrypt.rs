//! Secrets encryption at rest: the key file the server starts with (`--secrets-encryption`),
//! and `kinglet secrets-encrypt status|rotate`. Rotation runs with the server stopped, on the
//! datastore directly: a new key first (so a crash midway leaves every Secret readable), every
//! Secret rewritten with it, then the old keys dropped and the old revisions compacted away.

use std::path::Path;

use anyhow::Context;
use kinglet_apiserver::encryption::{self, AesGcmKey, Config, Provider};

use crate::cli::{SecretsEncryptArgs, SecretsEncryptCommand};

/// The encryption configuration the server runs with: the one on disk if any (even without
/// `--secrets-encryption`: the Secrets written with it need it), else a new key when `enable`.
pub fn server_config(data_dir: &Path, enable: bool) -> anyhow::Result<Option<Config>> {
    let path = encryption::config_path(data_dir);
    if let Some(c) = Config::load(&path)? {
        if !enable {
            tracing::warn!(
                "{} exists: Secrets stay encrypted at rest without --secrets-encryption",
                path.display()
            );
        }
        return Ok(Some(c));
    }
    if !enable {
        return Ok(None);
    }
    let c = Config {
        providers: vec![
            Provider::AesGcm(vec![AesGcmKey::generate(&new_key_name(None))?]),
            Provider::Identity,
        ],
    };
    c.save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(
        "secrets encryption enabled: key in {}; Secrets are encrypted when next written",
        path.display()
    );
    Ok(Some(c))
}

/// `aesgcmkey-<unix time>`, unlike `previous`.
fn new_key_name(previous: Option<&Config>) -> String {
    let mut stamp = chrono::Utc::now().timestamp();
    loop {
        let name = format!("aesgcmkey-{stamp}");
        if previous.is_none_or(|p| p.keys().all(|k| k.name != name)) {
            return name;
        }
        stamp += 1;
    }
}

pub fn run(args: &SecretsEncryptArgs) -> anyhow::Result<()> {
    match args.command {
        SecretsEncryptCommand::Status => status(&args.data_dir),
        SecretsEncryptCommand::Rotate => rotate(&args.data_dir),
    }
}

fn status(data_dir: &Path) -> anyhow::Result<()> {
    let path = encryption::config_path(data_dir);
    let Some(c) = Config::load(&path)? else {
        println!("Encryption Status: Disabled");
        return Ok(());
    };
    match c.write_key() {
        Some(_) => println!("Encryption Status: Enabled"),
        None => println!("Encryption Status: Disabled (keys kept to read older Secrets)"),
    }
    println!("Configuration: {}", path.display());
    println!();
    println!("Active  Key Type  Name");
    println!("------  --------  ----");
    let mut first = true;
    for p in &c.providers {
        match p {
            Provider::AesGcm(keys) => {
                for k in keys {
                    let mark = if first { "*" } else { " " };
                    println!("  {mark}     AES-GCM   {}", k.name);
                    first = false;
                }
            }
            Provider::Identity => {
                let mark = if first { "*" } else { " " };
                println!("  {mark}     identity  -");
                first = false;
            }
        }
    }
    Ok(())
}

fn rotate(data_dir: &Path) -> anyhow::Result<()> {
    let server_dir = data_dir.join("server");
    anyhow::ensure!(
        server_dir.is_dir(),
        "no server data in {}",
        data_dir.display()
    );
    let _alone = kinglet_core::lockfile::hold_alone(
        &server_dir.join("lock"),
        &format!("data directory {}", data_dir.display()),
    )
    .map_err(|e| e.context("stop the server before rotating the encryption key"))?;
    // The rewrite works on the data directory's SQLite datastore; a server on etcd has none
    // here, and a new key without its Secrets rewritten would leave them unreadable.
    let db = server_dir.join("db").join("state.db");
    anyhow::ensure!(
        db.exists(),
        "no SQLite datastore at {}: rotation of a server on --datastore-endpoint is not supported",
        db.display()
    );
    let path = encryption::config_path(data_dir);
    let old = Config::load(&path)?.with_context(|| {
        format!(
            "secrets encryption is not enabled ({} does not exist): start the server with --secrets-encryption",
            path.display()
        )
    })?;
    let name = new_key_name(Some(&old));
    // Stage 1: the new key writes, every old key still reads.
    let new_key = AesGcmKey::generate(&name)?;
    let new_secret = new_key.secret().to_vec();
    let mut keys = vec![new_key];
    let reads = |c: &Config| -> anyhow::Result<Vec<AesGcmKey>> {
        c.keys()
            .map(|k| AesGcmKey::new(&k.name, k.secret().to_vec()))
            .collect()
    };
    keys.extend(reads(&old)?);
    let both = Config {
        providers: vec![Provider::AesGcm(keys), Provider::Identity],
    };
    both.save(&path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rewritten = runtime.block_on(reencrypt(data_dir, Config::parse(&both.to_json())?))?;
    // Stage 2: only the new key (and plaintext, for Secrets of before encryption).
    let only_new = Config {
        providers: vec![
            Provider::AesGcm(vec![AesGcmKey::new(&name, new_secret)?]),
            Provider::Identity,
        ],
    };
    only_new.save(&path)?;
    println!("rotated to key {name}: {rewritten} Secrets re-encrypted, old keys removed");
    Ok(())
}

/// Rewrites every Secret through `config` (the first key writes); how many. Then compacts the
/// history, whose older revisions the old keys wrote.
async fn reencrypt(data_dir: &Path, config: Config) -> anyhow::Result<usize> {
    let store = kinglet_store::Store::open(&data_dir.join("server").join("db").join("state.db"))
        .context("opening the datastore")?;
    let storage = encryption::Storage::new(store, Some(config));
    // A data dir of an earlier release keeps Secrets at the old keys until its server starts.
    kinglet_apiserver::layout::migrate(&storage)
        .await
        .context("moving Secrets to upstream's key layout")?;
    let mut after = None;
    let mut count = 0;
    let rev = storage.current_rev();
    loop {
        let page = storage
            .list(encryption::SECRETS_PREFIX, rev, after.clone(), Some(100))
            .await
            .context("reading the Secrets")?;
        for rec in &page.items {
            storage
                .update(&rec.key, Some(rec.rev), rec.value.clone())
                .await
                .with_context(|| format!("rewriting {}", rec.key))?;
            count += 1;
        }
        match (page.more, page.items.last()) {
            (true, Some(last)) => after = Some(last.key.clone()),
            _ => break,
        }
    }
    storage
        .compact(storage.current_rev())
        .await
        .context("compacting the old revisions")?;
    Ok(count)
}
