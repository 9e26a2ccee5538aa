//! Secrets encrypted at rest, with upstream's `EncryptionConfiguration` semantics for the
//! `aesgcm` and `identity` providers: the first provider writes, every provider reads. An
//! `aesgcm` value is stored as `k8s:enc:aesgcm:v1:<key name>:` + a random 12-byte nonce + the
//! AES-GCM ciphertext and tag, with the storage key as additional authenticated data (so a
//! value copied to another key does not decrypt), as upstream's `aes` transformer stores it.
//!
//! [`Storage`] wraps the datastore so that every reader in the API server and controllers sees
//! plaintext and every write under the Secrets prefix is encrypted: one place, not one per
//! reader.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kinglet_store::{Event, ListPage, Record, Store, StoreError, WatchStream};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Value, json};

/// Where Secrets are stored.
pub const SECRETS_PREFIX: &str = "/registry/secrets/";

const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";

/// The encryption configuration's file under the data directory (k3s's place).
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir
        .join("server")
        .join("cred")
        .join("encryption-config.json")
}

/// One provider of the configuration, in order.
pub enum Provider {
    AesGcm(Vec<AesGcmKey>),
    Identity,
}

pub struct AesGcmKey {
    pub name: String,
    /// Key bytes (16 or 32).
    secret: Vec<u8>,
    key: LessSafeKey,
}

impl AesGcmKey {
    /// A key from its name and raw bytes (16 or 32: ring has no AES-192).
    pub fn new(name: &str, secret: Vec<u8>) -> anyhow::Result<AesGcmKey> {
        anyhow::ensure!(
            !name.is_empty() && !name.contains(':'),
            "encryption key name {name:?} must be non-empty and without ':'"
        );
        let alg = match secret.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            n => anyhow::bail!(
                "encryption key {name:?} is {n} bytes long: AES-GCM keys here must be 16 or 32 bytes"
            ),
        };
        let key = LessSafeKey::new(
            UnboundKey::new(alg, &secret)
                .map_err(|_| anyhow::anyhow!("encryption key {name:?} is unusable"))?,
        );
        Ok(AesGcmKey {
            name: name.to_string(),
            secret,
            key,
        })
    }

    /// A new random 32-byte key.
    pub fn generate(name: &str) -> anyhow::Result<AesGcmKey> {
        use ring::rand::SecureRandom;
        let mut secret = vec![0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| anyhow::anyhow!("no randomness for a new encryption key"))?;
        AesGcmKey::new(name, secret)
    }

    /// The key's bytes.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    fn prefix(&self) -> String {
        format!("{AESGCM_PREFIX}{}:", self.name)
    }
}

/// An `EncryptionConfiguration` for Secrets.
pub struct Config {
    pub providers: Vec<Provider>,
}

impl Config {
    /// Parses the configuration (JSON or YAML). Only the `secrets` resource and the `aesgcm`
    /// and `identity` providers are supported; anything else is refused, not ignored.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        use base64::Engine;
        let doc: Value = serde_yaml::from_str(text)?;
        anyhow::ensure!(
            doc["kind"] == "EncryptionConfiguration",
            "kind must be EncryptionConfiguration"
        );
        let rules = doc["resources"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(rules.len() == 1, "exactly one resources entry is supported");
        let rule = &rules[0];
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        anyhow::ensure!(
            resources == ["secrets"],
            "only resources: [secrets] is supported, not {resources:?}"
        );
        let mut providers = Vec::new();
        for p in rule["providers"].as_array().into_iter().flatten() {
            let obj = p.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                anyhow::anyhow!("each provider must name exactly one provider type")
            })?;
            let (kind, spec) = obj.iter().next().expect("one entry");
            match kind.as_str() {
                "identity" => providers.push(Provider::Identity),
                "aesgcm" => {
                    let mut keys = Vec::new();
                    for k in spec["keys"].as_array().into_iter().flatten() {
                        let name = k["name"].as_str().unwrap_or("");
                        let secret = base64::engine::general_purpose::STANDARD
                            .decode(k["secret"].as_str().unwrap_or(""))
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "encryption key {name:?}: secret is not base64: {e}"
                                )
                            })?;
                        keys.push(AesGcmKey::new(name, secret)?);
                    }
                    anyhow::ensure!(!keys.is_empty(), "the aesgcm provider has no keys");
                    providers.push(Provider::AesGcm(keys));
                }
                other => anyhow::bail!("encryption provider {other:?} is not supported"),
            }
        }
        anyhow::ensure!(!providers.is_empty(), "no encryption providers");
        let mut names: Vec<&str> = providers
            .iter()
            .flat_map(|p| match p {
                Provider::AesGcm(keys) => keys.iter().map(|k| k.name.as_str()).collect(),
                Provider::Identity => Vec::new(),
            })
            .collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        anyhow::ensure!(names.len() == n, "encryption key names must be unique");
        Ok(Config { providers })
    }

    /// Reads the configuration file; `None` when there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<Config>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text)
                .map(Some)
                .map_err(|e| e.context(format!("reading {}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    }

    /// The configuration as upstream's JSON, as k3s writes it.
    pub fn to_json(&self) -> String {
        use base64::Engine;
        let providers: Vec<Value> = self
            .providers
            .iter()
            .map(|p| match p {
                Provider::Identity => json!({"identity": {}}),
                Provider::AesGcm(keys) => json!({"aesgcm": {"keys": keys.iter().map(|k| json!({
                    "name": k.name,
                    "secret": base64::engine::general_purpose::STANDARD.encode(&k.secret),
                })).collect::<Vec<_>>()}}),
            })
            .collect();
        json!({
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": providers}],
        })
        .to_string()
    }

    /// Writes the configuration, readable by its owner only, atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        kinglet_pki::write_private(path, &self.to_json())
    }

    /// The name of the key that writes, if the first provider encrypts.
    pub fn write_key(&self) -> Option<&str> {
        match self.providers.first()? {
            Provider::AesGcm(keys) => keys.first().map(|k| k.name.as_str()),
            Provider::Identity => None,
        }
    }

    /// Every aesgcm key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &AesGcmKey> {
        self.providers.iter().flat_map(|p| match p {
            Provider::AesGcm(keys) => keys.as_slice(),
            Provider::Identity => &[],
        })
    }

    fn reads_plaintext(&self) -> bool {
        self.providers
            .iter()
            .any(|p| matches!(p, Provider::Identity))
    }

    /// `value` as stored under `key`: encrypted with the first key, unless identity writes.
    pub fn encrypt(&self, key: &str, value: &[u8]) -> Result<Bytes, StoreError> {
        let Some(Provider::AesGcm(keys)) = self.providers.first() else {
            return Ok(Bytes::copy_from_slice(value));
        };
        let k = &keys[0];
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Internal("no randomness for a nonce".into()))?;
        let mut sealed = value.to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| unable(key, format!("encrypting with key {:?} failed", k.name)))?;
        let prefix = k.prefix();
        let mut out = Vec::with_capacity(prefix.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Bytes::from(out))
    }

    /// The plaintext of `stored` (read from `key`).
    pub fn decrypt<'a>(&self, key: &str, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, StoreError> {
        let Some(rest) = stored.strip_prefix(AESGCM_PREFIX.as_bytes()) else {
            if stored.starts_with(b"k8s:enc:") {
                return Err(unable(key, "no matching prefix found".into()));
            }
            return match self.reads_plaintext() {
                true => Ok(Cow::Borrowed(stored)),
                false => Err(unable(
                    key,
                    "the value is not encrypted and the identity provider is not configured".into(),
                )),
            };
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| unable(key, "no key name in the encrypted value".into()))?;
        let name = String::from_utf8_lossy(&rest[..colon]);
        let k = self.keys().find(|k| k.name == name).ok_or_else(|| {
            unable(
                key,
                format!("no aesgcm key named {name:?} in the encryption configuration"),
            )
        })?;
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(unable(
                key,
                format!("the value of key {name:?} is too short"),
            ));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| unable(key, "bad nonce".into()))?;
        let mut buf = sealed.to_vec();
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| {
                unable(
                    key,
                    format!("decrypting with key {name:?}: message authentication failed"),
                )
            })?;
        let n = plain.len();
        buf.truncate(n);
        Ok(Cow::Owned(buf))
    }
}

fn unable(key: &str, why: String) -> StoreError {
    StoreError::Internal(format!("unable to transform key {key:?}: {why}"))
}

/// The datastore as the API server uses it: values under [`SECRETS_PREFIX`] pass through the
/// encryption configuration, if there is one. Everything else is the store's own.
#[derive(Clone)]
pub struct Storage {
    store: Store,
    encryption: Option<Arc<Config>>,
}

impl From<Store> for Storage {
    fn from(store: Store) -> Storage {
        Storage {
            store,
            encryption: None,
        }
    }
}

impl std::ops::Deref for Storage {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Storage {
    pub fn new(store: Store, encryption: Option<Config>) -> Storage {
        Storage {
            store,
            encryption: encryption.map(Arc::new),
        }
    }

    /// The store underneath, without the transformation.
    pub fn raw(&self) -> &Store {
        &self.store
    }

    /// The encryption configuration, if Secrets are encrypted.
    pub(crate) fn encryption(&self) -> Option<&Config> {
        self.encryption.as_deref()
    }

    fn transforms(&self, key: &str) -> Option<&Config> {
        self.encryption
            .as_deref()
            .filter(|_| key.starts_with(SECRETS_PREFIX))
    }

    fn stored_form(&self, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
        match self.transforms(key) {
            Some(c) => c.encrypt(key, &value),
            None => Ok(value),
        }
    }

    pub(crate) fn plain_form(&self, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
        match self.transforms(key) {
            Some(c) => match c.decrypt(key, &value)? {
                Cow::Borrowed(_) => Ok(value),
                Cow::Owned(v) => Ok(Bytes::from(v)),
            },
            None => Ok(value),
        }
    }

    fn record(&self, mut rec: Record) -> Result<Record, StoreError> {
        rec.value = self.plain_form(&rec.key, std::mem::take(&mut rec.value))?;
        Ok(rec)
    }

    pub async fn create(&self, key: &str, value: Bytes) -> kinglet_store::Result<i64> {
        self.store.create(key, self.stored_form(key, value)?).await
    }

    pub async fn update(
        &self,
        key: &str,
        expected_rev: Option<i64>,
        value: Bytes,
    ) -> kinglet_store::Result<i64> {
        self.store
            .update(key, expected_rev, self.stored_form(key, value)?)
            .await
    }

    /// See [`Store::update_towards_deletion`].
    pub async fn update_towards_deletion(
        &self,
        key: &str,
        expected_rev: Option<i64>,
        value: Bytes,
    ) -> kinglet_store::Result<i64> {
        self.store
            .update_towards_deletion(key, expected_rev, self.stored_form(key, value)?)
            .await
    }

    pub async fn delete(
        &self,
        key: &str,
        expected_rev: Option<i64>,
    ) -> kinglet_store::Result<(i64, Record)> {
        let (rev, prev) = self.store.delete(key, expected_rev).await?;
        // The object is gone either way: an unreadable last state is logged, not an error.
        let prev = match self.record(prev.clone()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                prev
            }
        };
        Ok((rev, prev))
    }

    pub async fn get(&self, key: &str) -> kinglet_store::Result<Option<Record>> {
        self.store
            .get(key)
            .await?
            .map(|r| self.record(r))
            .transpose()
    }

    pub async fn list(
        &self,
        prefix: &str,
        rev: i64,
        after: Option<String>,
        limit: Option<usize>,
    ) -> kinglet_store::Result<ListPage> {
        let mut page = self.store.list(prefix, rev, after, limit).await?;
        if self.encryption.is_some() {
            page.items = std::mem::take(&mut page.items)
                .into_iter()
                .map(|r| self.record(r))
                .collect::<Result<_, _>>()?;
        }
        Ok(page)
    }

    pub async fn watch(&self, prefix: &str, after: i64) -> kinglet_store::Result<Watch> {
        Ok(Watch {
            inner: self.store.watch(prefix, after).await?,
            encryption: self.encryption.clone(),
        })
    }
}

/// A watch whose Secret events carry plaintext.
pub struct Watch {
    inner: WatchStream,
    encryption: Option<Arc<Config>>,
}

impl Watch {
    /// The next event; one whose value cannot be decrypted is logged and skipped (a watch has
    /// no way to carry the error, and ending it would only repeat it on the next watch).
    /// Ends as the store's watch ends (fallen behind, or the store closed).
    pub async fn next(&mut self) -> Result<Arc<Event>, impl std::fmt::Debug + use<>> {
        loop {
            let ev = match self.inner.next().await {
                Ok(ev) => ev,
                Err(end) => return Err(end),
            };
            let Some(c) = self
                .encryption
                .as_deref()
                .filter(|_| ev.record.key.starts_with(SECRETS_PREFIX))
            else {
                return Ok(ev);
            };
            let key = &ev.record.key;
            let plain = |v: &Bytes| -> Result<Bytes, StoreError> {
                Ok(Bytes::from(c.decrypt(key, v)?.into_owned()))
            };
            let value = match plain(&ev.record.value) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("watch: {e}");
                    continue;
                }
            };
            let prev = ev.prev.as_ref().and_then(|p| plain(p).ok());
            return Ok(Arc::new(Event {
                typ: ev.typ,
                record: Record {
                    value,
                    ..ev.record.clone()
                },
                prev,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(first: &str, names: &[&str], identity: bool) -> Config {
        let mut keys = vec![AesGcmKey::generate(first).unwrap()];
        for n in names {
            keys.push(AesGcmKey::generate(n).unwrap());
        }
        let mut providers = vec![Provider::AesGcm(keys)];
        if identity {
            providers.push(Provider::Identity);
        }
        Config { providers }
    }

    #[test]
    fn round_trip_layout_and_key_binding() {
        let c = config("k1", &[], true);
        let key = "/registry/secrets/default/s";
        let sealed = c.encrypt(key, b"{\"data\":1}").unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        // prefix + nonce + plaintext + tag
        assert_eq!(sealed.len(), "k8s:enc:aesgcm:v1:k1:".len() + 12 + 10 + 16);
        assert_eq!(&*c.decrypt(key, &sealed).unwrap(), b"{\"data\":1}");
        // The storage key is authenticated: the value does not decrypt elsewhere.
        let moved = c.decrypt("/registry/secrets/default/t", &sealed);
        assert!(
            moved
                .unwrap_err()
                .to_string()
                .contains("authentication failed")
        );
        // Plaintext reads through identity only.
        assert_eq!(&*c.decrypt(key, b"{}").unwrap(), b"{}");
        let strict = config("k1", &[], false);
        assert!(strict.decrypt(key, b"{}").is_err());
    }

    #[test]
    fn unknown_key_and_corrupt_values_are_errors_naming_the_key() {
        let old = config("old", &[], true);
        let key = "/registry/secrets/ns/x";
        let sealed = old.encrypt(key, b"secret").unwrap();
        let new = config("new", &[], true);
        let e = new.decrypt(key, &sealed).unwrap_err().to_string();
        assert!(e.contains("\"old\"") && e.contains(key), "{e}");
        // Truncated and garbage values.
        for bad in [
            &sealed[..25],
            b"k8s:enc:aesgcm:v1:old".as_slice(),
            b"k8s:enc:secretbox:v1:x:abc",
        ] {
            assert!(old.decrypt(key, bad).is_err());
        }
        let mut flipped = sealed.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(old.decrypt(key, &flipped).is_err());
        // Reading with several keys: the one named in the value.
        let both = Config {
            providers: vec![
                Provider::AesGcm(vec![AesGcmKey::generate("new").unwrap()]),
                Provider::AesGcm(vec![
                    AesGcmKey::new("old", old.keys().next().unwrap().secret.clone()).unwrap(),
                ]),
            ],
        };
        assert_eq!(&*both.decrypt(key, &sealed).unwrap(), b"secret");
    }

    #[test]
    fn configuration_json_round_trip_and_refusals() {
        let c = config("a", &["b"], true);
        let parsed = Config::parse(&c.to_json()).unwrap();
        assert_eq!(parsed.write_key(), Some("a"));
        assert_eq!(
            parsed.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(parsed.reads_plaintext());
        let other = r#"{"kind":"EncryptionConfiguration","resources":[{"resources":["secrets"],"providers":[{"aescbc":{"keys":[]}}]}]}"#;
        assert!(
            Config::parse(other)
                .err()
                .unwrap()
                .to_string()
                .contains("aescbc")
        );
        let short = r#"{"kind":"EncryptionConfiguration","resources":[{"resources":["secrets"],"providers":[{"aesgcm":{"keys":[{"name":"k","secret":"c2hvcnQ="}]}}]}]}"#;
        assert!(Config::parse(short).is_err());
        let cms = r#"{"kind":"EncryptionConfiguration","resources":[{"resources":["configmaps"],"providers":[{"identity":{}}]}]}"#;
        assert!(Config::parse(cms).is_err());
        assert!(Config::parse("[").is_err());
        assert!(Config::parse("{}").is_err());
    }
}
