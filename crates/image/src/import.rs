//! `kinglet images import`: OCI image layouts and `docker save` archives, as plain tar or
//! compressed with gzip or zstd.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use oci_spec::image::{Descriptor, ImageIndex, MediaType};
use serde::Deserialize;

use super::{Image, ImageStore, layer, node_platform, normalize};

/// Annotations that name an image in an OCI layout (containerd's, then the standard one).
const NAME_ANNOTATIONS: [&str; 2] = [
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports every image in the archive at `file`.
    pub fn import(&self, file: &Path) -> anyhow::Result<Vec<Image>> {
        let tmp = self.tmp_dir()?;
        let dir = tmp.path();
        let f = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let mut archive = tar::Archive::new(layer::decompressed(f)?);
        archive.set_preserve_ownerships(false);
        archive
            .unpack(dir)
            .with_context(|| format!("{} is not a readable tar archive", file.display()))?;
        if dir.join("index.json").exists() {
            self.with_lock(|| self.import_layout(dir))
        } else if dir.join("manifest.json").exists() {
            self.with_lock(|| self.import_docker(dir))
        } else {
            bail!(
                "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
                file.display()
            )
        }
    }

    fn import_layout(&self, dir: &Path) -> anyhow::Result<Vec<Image>> {
        let index: ImageIndex = read_json(&dir.join("index.json"))?;
        let mut images = Vec::new();
        for desc in index.manifests() {
            let names = layout_names(desc);
            let manifest_desc = if is_index(desc.media_type().as_ref()) {
                let nested: ImageIndex = serde_json::from_slice(&layout_blob(dir, desc)?)?;
                pick_platform(nested.manifests())?.clone()
            } else {
                desc.clone()
            };
            let manifest_bytes = layout_blob(dir, &manifest_desc)?;
            let manifest: oci_spec::image::ImageManifest =
                serde_json::from_slice(&manifest_bytes).context("parsing a manifest")?;
            for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
                self.put_blob_file(&layout_path(dir, blob), Some(blob.digest().as_ref()))?;
            }
            let digest = self.put_blob(&manifest_bytes, Some(manifest_desc.digest().as_ref()))?;
            images.push(self.commit(&digest, &names)?);
        }
        if images.is_empty() {
            bail!("the image layout lists no images");
        }
        Ok(images)
    }

    fn import_docker(&self, dir: &Path) -> anyhow::Result<Vec<Image>> {
        let entries: Vec<DockerEntry> = read_json(&dir.join("manifest.json"))?;
        let mut images = Vec::new();
        for e in entries {
            let config_path = dir.join(&e.config);
            let config = self.put_blob_file(&config_path, None)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let path = dir.join(l);
                let digest = self.put_blob_file(&path, None)?;
                layers.push(serde_json::json!({
                    "mediaType": layer_media_type(&path)?,
                    "digest": digest,
                    "size": fs::metadata(&path)?.len(),
                }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config,
                    "size": fs::metadata(&config_path)?.len(),
                },
                "layers": layers,
            });
            let digest = self.put_blob(&serde_json::to_vec(&manifest)?, None)?;
            let names = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| normalize(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            images.push(self.commit(&digest, &names)?);
        }
        Ok(images)
    }
}

/// The manifest for this node's platform in a multi-platform index.
pub fn pick_platform(manifests: &[Descriptor]) -> anyhow::Result<&Descriptor> {
    let (os, arch) = node_platform();
    manifests
        .iter()
        .find(|m| {
            m.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .or_else(|| {
            (manifests.len() == 1 && manifests[0].platform().is_none()).then(|| &manifests[0])
        })
        .with_context(|| format!("no image for platform {os}/{arch}"))
}

pub fn is_index(media_type: &str) -> bool {
    media_type == MediaType::ImageIndex.to_string()
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn layout_names(desc: &Descriptor) -> Vec<String> {
    let Some(ann) = desc.annotations() else {
        return Vec::new();
    };
    NAME_ANNOTATIONS
        .iter()
        .filter_map(|k| ann.get(*k))
        // A bare tag ("1.36") names no repository: only full references count.
        .filter(|n| n.contains('/') || n.contains(':'))
        .filter_map(|n| normalize(n).ok())
        .take(1)
        .collect()
}

fn layout_path(dir: &Path, desc: &Descriptor) -> std::path::PathBuf {
    let d = desc.digest();
    dir.join("blobs")
        .join(d.algorithm().to_string())
        .join(d.digest())
}

fn layout_blob(dir: &Path, desc: &Descriptor) -> anyhow::Result<Vec<u8>> {
    let path = layout_path(dir, desc);
    fs::read(&path).with_context(|| format!("blob {} missing from the layout", desc.digest()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn layer_media_type(path: &Path) -> anyhow::Result<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let n = fs::File::open(path)?.read(&mut head)?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    })
}
