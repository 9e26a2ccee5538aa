//! Bootstrap data: the files every server of one cluster must hold alike (the CAs and their
//! keys, the service-account signing key, the server token, the secrets-encryption key), kept
//! in a shared datastore encrypted with the server token, as k3s does: a key derived from the
//! token's passphrase with PBKDF2 (HMAC-SHA1, 4096 rounds, a random salt) seals the JSON of the
//! files with AES-256-GCM, stored as `<salt>:<base64 of nonce and ciphertext>` under a key named
//! by a short hash of the passphrase.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Where bootstrap data lives in the datastore (outside `/registry/`: not an object).
pub const KEY_PREFIX: &str = "/kinglet/bootstrap/";

/// The shared files, relative to the data directory. Every one is written 0600.
pub const SHARED_FILES: [&str; 7] = [
    CA_CERT,
    "server/tls/ca.key",
    "server/tls/front-proxy-ca.crt",
    "server/tls/front-proxy-ca.key",
    "server/tls/service-account.key",
    TOKEN_FILE,
    ENCRYPTION_CONFIG,
];
/// The cluster CA's certificate, whose hash join tokens carry.
pub const CA_CERT: &str = "server/tls/ca.crt";
/// The server token file.
pub const TOKEN_FILE: &str = "server/token";
/// The secrets-encryption configuration.
pub const ENCRYPTION_CONFIG: &str = "server/cred/encryption-config.json";

const PBKDF2_ROUNDS: u32 = 4096;
/// Bootstrap data larger than this is refused (it is a handful of PEM files).
const MAX_SIZE: usize = 1 << 20;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The datastore key of the bootstrap data sealed with `passphrase`: a short hash of it, so the
/// key names no secret and another token finds nothing.
pub fn storage_key(passphrase: &str) -> String {
    let digest = hex(&Sha256::digest(passphrase.as_bytes()));
    format!("{KEY_PREFIX}{}", &digest[..12])
}

fn derive(passphrase: &str, salt: &[u8]) -> Result<LessSafeKey> {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        NonZeroU32::new(PBKDF2_ROUNDS).context("PBKDF2 rounds")?,
        salt,
        passphrase.as_bytes(),
        &mut key,
    );
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("AES key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Seals `plaintext` with a key derived from `passphrase`.
pub fn encrypt(passphrase: &str, plaintext: &[u8]) -> Result<String> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 8];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt)
        .and_then(|_| rng.fill(&mut nonce))
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let salt = hex(&salt);
    let key = derive(passphrase, salt.as_bytes())?;
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut sealed,
    )
    .map_err(|_| anyhow::anyhow!("sealing the bootstrap data"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(format!(
        "{salt}:{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}

/// Opens what [`encrypt`] sealed; an error when the passphrase is not the one it was sealed
/// with, or the data is malformed.
pub fn decrypt(passphrase: &str, stored: &[u8]) -> Result<Vec<u8>> {
    if stored.len() > MAX_SIZE * 2 {
        bail!("the bootstrap data is too large");
    }
    let text = std::str::from_utf8(stored).context("the bootstrap data is not text")?;
    let (salt, data) = text
        .split_once(':')
        .context("the bootstrap data is malformed (no salt)")?;
    let mut data = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .context("the bootstrap data is malformed (base64)")?;
    if data.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        bail!("the bootstrap data is malformed (too short)");
    }
    let nonce = Nonce::try_assume_unique_for_key(&data[..NONCE_LEN])
        .map_err(|_| anyhow::anyhow!("the bootstrap data is malformed (nonce)"))?;
    let key = derive(passphrase, salt.as_bytes())?;
    let opened = key
        .open_in_place(nonce, Aad::empty(), &mut data[NONCE_LEN..])
        .map_err(|_| anyhow::anyhow!("the token does not decrypt the cluster's bootstrap data"))?;
    Ok(opened.to_vec())
}

/// The shared files by path (relative to the data directory).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Files(pub BTreeMap<String, Vec<u8>>);

impl Files {
    /// The shared files present under `data_dir`.
    pub fn read(data_dir: &Path) -> Result<Files> {
        let mut out = BTreeMap::new();
        for rel in SHARED_FILES {
            let path = data_dir.join(rel);
            match std::fs::read(&path) {
                Ok(b) => {
                    out.insert(rel.to_string(), b);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        Ok(Files(out))
    }

    pub fn get(&self, rel: &str) -> Option<&[u8]> {
        self.0.get(rel).map(Vec::as_slice)
    }

    /// JSON: `{"<path>": {"content": "<base64>"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!({"content": b64.encode(v)})))
            .collect();
        serde_json::to_vec(&map).unwrap_or_default()
    }

    /// Parses [`Files::to_json`]; only the known shared paths are accepted, so data from the
    /// datastore never names another file.
    pub fn from_json(data: &[u8]) -> Result<Files> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(data).context("the bootstrap data is not a JSON object")?;
        let mut out = BTreeMap::new();
        for (k, v) in map {
            if !SHARED_FILES.contains(&k.as_str()) {
                bail!("the bootstrap data names an unknown file {k:?}");
            }
            let content = v
                .get("content")
                .and_then(serde_json::Value::as_str)
                .with_context(|| format!("the bootstrap data's {k:?} has no content"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content)
                .with_context(|| format!("the bootstrap data's {k:?} is not base64"))?;
            out.insert(k, bytes);
        }
        Ok(Files(out))
    }

    /// The paths both hold with different contents (the token file aside: its secret is the
    /// passphrase, compared by the caller).
    pub fn differing(&self, other: &Files) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k.as_str() != TOKEN_FILE && other.0.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Writes these files under `data_dir` (0600); with `replace`, over existing ones, else
    /// only the missing ones. The paths written.
    pub fn write(&self, data_dir: &Path, replace: bool) -> Result<Vec<String>> {
        let mut written = Vec::new();
        for (rel, content) in &self.0 {
            let path = data_dir.join(rel);
            if !replace && path.exists() {
                continue;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let text = std::str::from_utf8(content)
                .with_context(|| format!("the bootstrap data's {rel:?} is not text"))?;
            crate::write_private(&path, text)
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(rel.clone());
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_with_its_token_only() {
        let files = Files(BTreeMap::from([
            (CA_CERT.to_string(), b"CERT".to_vec()),
            ("server/tls/ca.key".to_string(), b"KEY".to_vec()),
        ]));
        let sealed = encrypt("s3cret", &files.to_json()).unwrap();
        assert!(!sealed.contains("CERT") && !sealed.contains("s3cret"));
        let opened = decrypt("s3cret", sealed.as_bytes()).unwrap();
        assert_eq!(Files::from_json(&opened).unwrap(), files);
        // Another passphrase, or tampered data, opens nothing.
        let err = decrypt("other", sealed.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not decrypt"), "{err}");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(decrypt("s3cret", &tampered).is_err());
        assert!(decrypt("s3cret", b"no salt here").is_err());
        assert!(decrypt("s3cret", b"abcd:AAAA").is_err());
        // Each sealing has its own salt and nonce.
        assert_ne!(
            encrypt("s3cret", b"x").unwrap(),
            encrypt("s3cret", b"x").unwrap()
        );
    }

    #[test]
    fn storage_keys_name_no_secret() {
        let k = storage_key("s3cret");
        assert!(k.starts_with(KEY_PREFIX) && k.len() == KEY_PREFIX.len() + 12);
        assert_ne!(k, storage_key("other"));
    }

    #[test]
    fn only_known_files_are_accepted_and_written_private() {
        let evil = br#"{"../../etc/passwd": {"content": "eA=="}}"#;
        assert!(Files::from_json(evil).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("server/tls")).unwrap();
        std::fs::write(dir.path().join(CA_CERT), "LOCAL").unwrap();
        let remote = Files(BTreeMap::from([
            (CA_CERT.to_string(), b"REMOTE".to_vec()),
            ("server/tls/ca.key".to_string(), b"KEY".to_vec()),
        ]));
        let local = Files::read(dir.path()).unwrap();
        assert_eq!(local.differing(&remote), vec![CA_CERT.to_string()]);
        let written = remote.write(dir.path(), false).unwrap();
        assert_eq!(written, vec!["server/tls/ca.key".to_string()]);
        assert_eq!(std::fs::read(dir.path().join(CA_CERT)).unwrap(), b"LOCAL");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("server/tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
