//! Pulling from OCI and Docker registries with `oci-client`: token or basic auth, multi-arch
//! indexes resolved to this node's platform, blobs checked against their digests.

use std::path::Path;

use anyhow::Context;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::import::{is_index, pick_platform};
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

/// Registry credentials (from an imagePullSecret or the command line).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Registries on loopback speak plain HTTP, as Docker and containerd allow for them.
fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(registry)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ImageStore {
    /// Pulls `name` into the store; `progress` hears a line per blob fetched.
    pub async fn pull(
        &self,
        name: &str,
        credentials: Option<&Credentials>,
        progress: &(dyn Fn(String) + Sync),
    ) -> anyhow::Result<Image> {
        let reference = super::parse_reference(name)?.to_oci();
        let registry = reference.resolve_registry().to_string();
        let config = oci_client::client::ClientConfig {
            protocol: if is_loopback(&registry) {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            ..Default::default()
        };
        let client = Client::new(config);
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let (mut bytes, mut digest) = client
            .pull_manifest_raw(&reference, &auth, &ACCEPTED)
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
                .pull_manifest_raw(&by_digest, &auth, &ACCEPTED)
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
                fetch(&client, &reference, &digest, &path).await?;
                progress(format!(
                    "{}: fetched {} ({} bytes)",
                    reference.whole(),
                    digest,
                    desc.size()
                ));
            }
            fetched.push((path, digest));
        }
        let store = self.clone();
        let name = reference.whole();
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

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("registry.example.com:443"));
    }
}
