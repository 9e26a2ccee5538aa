//! Pulling from OCI and Docker registries with `oci-client`: token or basic auth, multi-arch
//! indexes resolved to this node's platform, blobs checked against their digests; mirrors,
//! rewrites, credentials and CAs from `registries.yaml` (`registries`).

use std::path::Path;

use anyhow::Context;
use oci_client::client::{Certificate, CertificateEncoding};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::import::{is_index, pick_platform};
use super::reference::ImageRef;
use super::registries::{Attempt, HostConfig, Registries};
use super::{Image, ImageStore};

const ACCEPTED: [&str; 4] = [
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a container gets when it names none: `Always` for `:latest` or no tag.
    pub fn for_container(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => match super::normalize(image) {
                Ok(n) if n.ends_with(":latest") => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// Registry credentials (from an imagePullSecret, `registries.yaml` or the command line).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// The password stays out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl ImageStore {
    /// Pulls `name` into the store, from the mirrors `registries` names for its registry and
    /// then from the registry itself; `credentials` (an imagePullSecret's) are sent to the
    /// image's own registry host only, other hosts get theirs from `registries`. `progress`
    /// hears a line per blob fetched.
    pub async fn pull(
        &self,
        name: &str,
        credentials: Option<&Credentials>,
        registries: &Registries,
        progress: &(dyn Fn(String) + Sync),
    ) -> anyhow::Result<Image> {
        let image = super::parse_reference(name)?;
        let whole = image.to_oci().whole();
        let attempts = registries.attempts(&image.registry, &image.repository);
        let mut failures = Vec::new();
        for attempt in &attempts {
            let config = registries.config(&attempt.host);
            let chosen = match (credentials, config.and_then(|c| c.auth.as_ref())) {
                (Some(c), _) if attempt.host == image.registry => Some(c),
                (_, from_file) => from_file,
            };
            let auth = match chosen {
                Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                None => RegistryAuth::Anonymous,
            };
            let reference = ImageRef {
                registry: attempt.host.clone(),
                repository: attempt.repository.clone(),
                ..image.clone()
            }
            .to_oci();
            let result = match client_for(attempt, config) {
                Ok(client) => {
                    self.pull_from(&client, &reference, &auth, &whole, progress)
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(img) => return Ok(img),
                Err(e) if attempts.len() == 1 => return Err(e),
                Err(e) => {
                    let scheme = if attempt.http { "http" } else { "https" };
                    let which = if attempt.default {
                        "default endpoint"
                    } else {
                        "mirror"
                    };
                    failures.push(format!("{which} {scheme}://{}: {e:#}", attempt.host));
                }
            }
        }
        if failures.is_empty() {
            anyhow::bail!(
                "pulling {whole}: no endpoint to pull from (the default endpoint is disabled)"
            );
        }
        anyhow::bail!("pulling {whole}: {}", failures.join("; "))
    }

    /// Pulls `reference` from one endpoint and stores it as `name`.
    async fn pull_from(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        name: &str,
        progress: &(dyn Fn(String) + Sync),
    ) -> anyhow::Result<Image> {
        let (mut bytes, mut digest) = client
            .pull_manifest_raw(reference, auth, &ACCEPTED)
            .await
            .with_context(|| format!("pulling manifest of {}", reference.whole()))?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(String::from))
            .unwrap_or_default();
        if is_index(&media_type) {
            let index: oci_spec::image::ImageIndex = serde_json::from_slice(&bytes)?;
            let chosen = pick_platform(index.manifests())?;
            let by_digest = reference.clone_with_digest(chosen.digest().to_string());
            (bytes, digest) = client
                .pull_manifest_raw(&by_digest, auth, &ACCEPTED)
                .await
                .context("pulling the platform's manifest")?;
        }
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_slice(&bytes).context("parsing the image manifest")?;
        let tmp = self.tmp_dir()?;
        let mut fetched = Vec::new();
        for (i, desc) in std::iter::once(manifest.config())
            .chain(manifest.layers())
            .enumerate()
        {
            let digest = desc.digest().to_string();
            let path = tmp.path().join(format!("blob-{i}"));
            if !self.blob_path(&digest).exists() {
                fetch(client, reference, &digest, &path).await?;
                progress(format!(
                    "{name}: fetched {} ({} bytes) from {}",
                    digest,
                    desc.size(),
                    reference.registry()
                ));
            }
            fetched.push((path, digest));
        }
        let store = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            store.with_lock(|| {
                for (path, digest) in &fetched {
                    if path.exists() {
                        store.put_blob_file(path, Some(digest))?;
                    }
                }
                let stored = store.put_blob(&bytes, Some(&digest))?;
                store.commit(&stored, &[name])
            })
        })
        .await?
    }
}

/// A client for one endpoint: its protocol, and the CAs `registries.yaml` gives its host.
fn client_for(attempt: &Attempt, config: Option<&HostConfig>) -> anyhow::Result<Client> {
    let mut config_out = oci_client::client::ClientConfig {
        protocol: if attempt.http {
            oci_client::client::ClientProtocol::Http
        } else {
            oci_client::client::ClientProtocol::Https
        },
        ..Default::default()
    };
    if let Some(c) = config {
        config_out.accept_invalid_certificates = c.insecure_skip_verify;
        if let Some(pem) = &c.ca_pem {
            config_out.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            });
        }
    }
    // `Client::new` would fall back to a default client on a bad certificate; this does not.
    Client::try_from(config_out)
        .map_err(|e| anyhow::anyhow!("TLS settings of {}: {e}", attempt.host))
}

async fn fetch(client: &Client, image: &Reference, digest: &str, to: &Path) -> anyhow::Result<()> {
    let file = tokio::fs::File::create(to).await?;
    let mut out = tokio::io::BufWriter::new(file);
    client
        .pull_blob(image, digest, &mut out)
        .await
        .with_context(|| format!("pulling blob {digest}"))?;
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pull_policy_follows_the_tag() {
        assert_eq!(
            PullPolicy::for_container(None, "busybox"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_container(None, "busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_container(Some("Never"), "busybox"),
            PullPolicy::Never
        );
    }
}
