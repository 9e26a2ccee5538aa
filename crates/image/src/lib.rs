//! Content-addressed image store under `<data-dir>/agent/store`:
//! - `blobs/sha256/<hex>`: manifests, configs and layers as received, named by their digest;
//! - `layers/<diff-id hex>/`: every layer unpacked once (whiteouts in overlayfs' form), shared by
//!   all images and containers that use it as an overlay lower directory;
//! - `images.json`: the images: ID (config digest), manifest digest, names and layers.
//!
//! Writers hold `lock` (an flock), so `kinglet images ...` and a running node share the store.

mod import;
mod layer;
mod pull;
mod reference;
mod registries;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use pull::{Credentials, PullPolicy};
pub use registries::Registries;

/// One image in the store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `sha256:<hex>` of the config blob, as the CRI reports image IDs.
    pub id: String,
    /// `sha256:<hex>` of the manifest (the "repo digest").
    pub manifest: String,
    /// Normalised references, e.g. `docker.io/library/busybox:1.36`.
    pub names: Vec<String>,
    /// Uncompressed layer digests, base layer first.
    pub layers: Vec<String>,
    /// Bytes of the layer blobs.
    pub size: u64,
}

/// What a container takes from its image's config.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Index {
    images: BTreeMap<String, Image>,
}

#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// `busybox` -> `docker.io/library/busybox:latest`, as Docker and the CRI name images.
pub fn normalize(name: &str) -> anyhow::Result<String> {
    Ok(parse_reference(name)?.to_string())
}

fn parse_reference(name: &str) -> anyhow::Result<reference::ImageRef> {
    reference::parse(name).map_err(|e| anyhow::anyhow!("invalid image name {name:?}: {e}"))
}

/// The platform this node runs images for, in OCI terms.
pub fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl ImageStore {
    pub fn open(data_dir: &Path) -> anyhow::Result<ImageStore> {
        let root = data_dir.join("agent/store");
        for d in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        Ok(ImageStore { root })
    }

    /// Scratch space in the store's file system (so results can be renamed into place),
    /// removed when dropped.
    fn tmp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::TempDir::new_in(self.root.join("tmp"))?)
    }

    fn lock(&self) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
        kinglet_core::lockfile::lock(&self.root.join("lock"), "image store")
    }

    /// Runs `f` (which stores blobs and commits images) holding the lock; if it fails, whatever
    /// it stored that no image uses is removed again.
    fn with_lock<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let _lock = self.lock()?;
        let result = f();
        if result.is_err() {
            let _ = self.read_index().and_then(|i| self.collect_garbage(&i));
        }
        result
    }

    fn read_index(&self) -> anyhow::Result<Index> {
        match fs::read(self.root.join("images.json")) {
            Ok(b) => serde_json::from_slice(&b).context("reading images.json"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_index(&self, index: &Index) -> anyhow::Result<()> {
        let tmp = self.root.join("images.json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(index)?)?;
        f.sync_all()?;
        fs::rename(tmp, self.root.join("images.json"))?;
        Ok(())
    }

    pub fn list(&self) -> anyhow::Result<Vec<Image>> {
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// The image a reference names: a normalised name, `name@sha256:...`, or an image ID
    /// (full or a unique prefix of at least 12 hex digits).
    pub fn find(&self, reference: &str) -> anyhow::Result<Option<Image>> {
        let images = self.list()?;
        let bare = reference.strip_prefix("sha256:").unwrap_or(reference);
        if bare.len() >= 12 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
            let hits: Vec<&Image> = images
                .iter()
                .filter(|i| i.id["sha256:".len()..].starts_with(bare))
                .collect();
            if hits.len() == 1 {
                return Ok(Some(hits[0].clone()));
            }
        }
        let Ok(name) = normalize(reference) else {
            return Ok(None);
        };
        if let Some((_, digest)) = name.split_once('@') {
            return Ok(images.into_iter().find(|i| i.manifest == digest));
        }
        Ok(images.into_iter().find(|i| i.names.contains(&name)))
    }

    /// Removes names (or whole images by ID); an image with no names left is deleted with the
    /// blobs and layers nothing else uses. Returns what was removed.
    pub fn remove(&self, reference: &str) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock()?;
        let Some(img) = self.find(reference)? else {
            bail!("image {reference:?} not found");
        };
        let mut index = self.read_index()?;
        let by_id = !reference.contains(':') || reference.starts_with("sha256:");
        let entry = index
            .images
            .get_mut(&img.id)
            .context("image vanished from the index")?;
        let mut removed = Vec::new();
        if by_id {
            removed.append(&mut entry.names);
        } else if let Ok(name) = normalize(reference) {
            entry.names.retain(|n| *n != name);
            removed.push(name);
        }
        if entry.names.is_empty() {
            index.images.remove(&img.id);
            removed.push(img.id.clone());
        }
        self.write_index(&index)?;
        self.collect_garbage(&index)?;
        Ok(removed)
    }

    /// Deletes blobs and layers no image refers to.
    fn collect_garbage(&self, index: &Index) -> anyhow::Result<()> {
        let mut keep_blobs = std::collections::HashSet::new();
        let mut keep_layers = std::collections::HashSet::new();
        for img in index.images.values() {
            keep_blobs.insert(hex_of(&img.id).to_string());
            keep_blobs.insert(hex_of(&img.manifest).to_string());
            if let Ok(m) = self.manifest(img) {
                for l in m.layers() {
                    keep_blobs.insert(l.digest().digest().to_string());
                }
            }
            keep_layers.extend(img.layers.iter().map(|l| hex_of(l).to_string()));
        }
        for entry in fs::read_dir(self.root.join("blobs/sha256"))?.flatten() {
            if !keep_blobs.contains(entry.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        for entry in fs::read_dir(self.root.join("layers"))?.flatten() {
            if !keep_layers.contains(entry.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub fn blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        fs::read(self.blob_path(digest)).with_context(|| format!("blob {digest} missing"))
    }

    fn manifest(&self, img: &Image) -> anyhow::Result<oci_spec::image::ImageManifest> {
        Ok(serde_json::from_slice(&self.blob(&img.manifest)?)?)
    }

    /// Entrypoint, command, environment, working directory and user from the image config.
    pub fn run_config(&self, img: &Image) -> anyhow::Result<RunConfig> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            config: Option<RunConfig>,
        }
        let c: Config = serde_json::from_slice(&self.blob(&img.id)?)?;
        Ok(c.config.unwrap_or_default())
    }

    /// The unpacked layer directories of an image, top layer first (overlayfs `lowerdir` order).
    pub fn layer_dirs(&self, img: &Image) -> Vec<PathBuf> {
        img.layers
            .iter()
            .rev()
            .map(|l| self.root.join("layers").join(hex_of(l)))
            .collect()
    }

    /// Stores `data` as a blob, checking it against `expected` when given; returns its digest.
    fn put_blob(&self, data: &[u8], expected: Option<&str>) -> anyhow::Result<String> {
        let digest = format!("sha256:{}", sha256_hex(data));
        self.place_blob(digest, expected, |tmp| fs::write(tmp, data))
    }

    /// Copies a file into the blob store under its digest (checked against `expected`).
    fn put_blob_file(&self, file: &Path, expected: Option<&str>) -> anyhow::Result<String> {
        let mut f = fs::File::open(file)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        self.place_blob(digest, expected, |tmp| fs::copy(file, tmp).map(|_| ()))
    }

    /// Checks `digest` against `expected`, then writes the blob (through a temporary file renamed
    /// into place) unless it is already stored.
    fn place_blob(
        &self,
        digest: String,
        expected: Option<&str>,
        write: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> anyhow::Result<String> {
        if let Some(want) = expected
            && want != digest
        {
            bail!("content digest {digest} does not match {want}");
        }
        let path = self.blob_path(&digest);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            write(&tmp)?;
            fs::rename(tmp, &path)?;
        }
        Ok(digest)
    }

    /// Records an image whose manifest, config and layer blobs are stored: unpacks the layers
    /// not yet unpacked and gives it `names` (taking them from any image that had them). The
    /// caller holds the lock from storing the blobs on, so garbage collection cannot race it.
    fn commit(&self, manifest_digest: &str, names: &[String]) -> anyhow::Result<Image> {
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_slice(&self.blob(manifest_digest)?)
                .context("parsing the image manifest")?;
        let config_digest = manifest.config().digest().to_string();
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&self.blob(&config_digest)?)
                .context("parsing the image config")?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            bail!(
                "image config lists {} layers, its manifest {}",
                diff_ids.len(),
                manifest.layers().len()
            );
        }
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let dir = self.root.join("layers").join(hex_of(diff_id));
            if !dir.exists() {
                let tmp = self.tmp_dir()?;
                let into = tmp.path().join("layer");
                layer::unpack(&self.blob_path(desc.digest().as_ref()), &into, diff_id)
                    .with_context(|| format!("unpacking layer {}", desc.digest()))?;
                fs::rename(&into, &dir)?;
            }
        }
        let image = Image {
            id: config_digest,
            manifest: manifest_digest.to_string(),
            names: Vec::new(),
            layers: diff_ids.clone(),
            size: manifest.layers().iter().map(|l| l.size()).sum(),
        };
        let mut index = self.read_index()?;
        // Names move to the new image; an image that loses its last one is dropped, as a
        // retag leaves it dangling in Docker.
        let mut orphaned = Vec::new();
        for (id, other) in index.images.iter_mut() {
            let had = other.names.len();
            other.names.retain(|n| !names.contains(n));
            if had > 0 && other.names.is_empty() && *id != image.id {
                orphaned.push(id.clone());
            }
        }
        let entry = index.images.entry(image.id.clone()).or_insert(image);
        entry.manifest = manifest_digest.to_string();
        for n in names {
            if !entry.names.contains(n) {
                entry.names.push(n.clone());
            }
        }
        let out = entry.clone();
        for id in &orphaned {
            index.images.remove(id);
        }
        self.write_index(&index)?;
        if !orphaned.is_empty() {
            self.collect_garbage(&index)?;
        }
        Ok(out)
    }
}

/// The hex part of `sha256:<hex>`.
fn hex_of(digest: &str) -> &str {
    digest.rsplit(':').next().unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn header(kind: tar::EntryType, size: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// A tar stream of `(path, Some(content))` files and `(path, None)` directories.
    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let (kind, data) = match content {
                Some(c) => (tar::EntryType::Regular, c.as_bytes()),
                None => (tar::EntryType::Directory, &b""[..]),
            };
            b.append_data(&mut header(kind, data.len()), path, data)
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// An OCI layout archive (zstd-compressed) of one image of two layers, the second deleting
    /// a file and making a directory opaque.
    fn layout_archive(name: &str, corrupt: bool) -> Vec<u8> {
        let l1 = tar_of(&[
            ("etc", None),
            ("etc/keep", Some("k")),
            ("etc/gone", Some("g")),
            ("data", None),
            ("data/old", Some("o")),
        ]);
        let l2 = tar_of(&[
            ("etc/.wh.gone", Some("")),
            ("data/.wh..wh..opq", Some("")),
            ("data/new", Some("n")),
        ]);
        let l2z = gzip(&l2);
        let config = serde_json::json!({
            "architecture": node_platform().1, "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/data"},
            "rootfs": {"type": "layers", "diff_ids": [
                format!("sha256:{}", sha256_hex(&l1)),
                format!("sha256:{}", sha256_hex(if corrupt { b"other" } else { &l2 })),
            ]},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let desc = |mt: &str, d: &[u8]| serde_json::json!({"mediaType": mt, "digest": format!("sha256:{}", sha256_hex(d)), "size": d.len()});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", &l1), desc("application/vnd.oci.image.layer.v1.tar+gzip", &l2z)],
        }))
        .unwrap();
        let mut mdesc = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
        mdesc["annotations"] = serde_json::json!({"io.containerd.image.name": name});
        let index =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]}))
                .unwrap();
        let blob = |d: &[u8]| format!("blobs/sha256/{}", sha256_hex(d));
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_string(), index),
            (blob(&manifest), manifest.clone()),
            (blob(&config), config.clone()),
            (blob(&l1), l1.clone()),
            (blob(&l2z), l2z.clone()),
        ] {
            b.append_data(
                &mut header(tar::EntryType::Regular, data.len()),
                path,
                &data[..],
            )
            .unwrap();
        }
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    #[test]
    fn import_unpacks_layers_with_overlay_whiteouts_and_rm_collects() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let archive = dir.path().join("app.tar.zst");
        fs::write(&archive, layout_archive("example.com/app:v1", false)).unwrap();
        let imported = store.import(&archive).unwrap();
        assert_eq!(imported.len(), 1);
        let img = store
            .find("example.com/app:v1")
            .unwrap()
            .expect("found by name");
        assert_eq!(img, imported[0]);
        assert_eq!(store.find(&img.id[7..19]).unwrap().as_ref(), Some(&img));
        assert_eq!(
            store.run_config(&img).unwrap().working_dir.as_deref(),
            Some("/data")
        );
        let dirs = store.layer_dirs(&img);
        assert_eq!(dirs.len(), 2);
        let (top, base) = (&dirs[0], &dirs[1]);
        assert_eq!(fs::read_to_string(base.join("etc/keep")).unwrap(), "k");
        let gone = fs::symlink_metadata(top.join("etc/gone")).unwrap();
        assert!(
            gone.file_type().is_char_device(),
            "whiteout is a 0/0 char device"
        );
        assert_eq!(
            xattr::get(top.join("data"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert!(!top.join("data/.wh..wh..opq").exists());
        // Importing again changes nothing; removing the only name removes blobs and layers.
        store.import(&archive).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove("example.com/app:v1").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("agent/store/layers"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            fs::read_dir(dir.path().join("agent/store/blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn corrupt_or_foreign_archives_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let bad = dir.path().join("bad.tar.zst");
        fs::write(&bad, layout_archive("example.com/app:v1", true)).unwrap();
        let err = format!("{:#}", store.import(&bad).unwrap_err());
        assert!(err.contains("does not match its diff ID"), "{err}");
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("agent/store/layers"))
                .unwrap()
                .count(),
            0
        );
        let junk = dir.path().join("junk.tar");
        fs::write(&junk, tar_of(&[("hello", Some("x"))])).unwrap();
        let err = format!("{:#}", store.import(&junk).unwrap_err());
        assert!(err.contains("neither an OCI image layout"), "{err}");
        fs::write(&junk, b"not a tar at all, just some bytes that go on").unwrap();
        assert!(store.import(&junk).is_err());
    }

    #[test]
    fn docker_save_archives_import_with_their_repo_tags() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let layer = tar_of(&[("hello", Some("world"))]);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!([{"Config": "cfg.json", "RepoTags": ["app:v2"], "Layers": ["abc/layer.tar"]}])).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("manifest.json", &manifest),
            ("cfg.json", &config),
            ("abc/layer.tar", &layer),
        ] {
            b.append_data(
                &mut header(tar::EntryType::Regular, data.len()),
                path,
                &data[..],
            )
            .unwrap();
        }
        let archive = dir.path().join("app.tar.gz");
        fs::write(&archive, gzip(&b.into_inner().unwrap())).unwrap();
        store.import(&archive).unwrap();
        let img = store
            .find("app:v2")
            .unwrap()
            .expect("docker.io/library/app:v2");
        assert_eq!(img.names, vec!["docker.io/library/app:v2".to_string()]);
        assert_eq!(
            store.run_config(&img).unwrap().entrypoint,
            Some(vec!["/hello".to_string()])
        );
        assert_eq!(
            fs::read_to_string(store.layer_dirs(&img)[0].join("hello")).unwrap(),
            "world"
        );
    }
}
