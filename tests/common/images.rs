//! Test images built here (no registry access): busybox from Debian's busybox-static, as an OCI
//! image layout tarball.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn header(kind: tar::EntryType, size: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// The busybox binary the tests put in images.
pub fn busybox() -> &'static str {
    for p in ["/usr/bin/busybox", "/bin/busybox"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("busybox not found: tests/run installs busybox-static");
}

/// The root file system layer: busybox with every applet linked, /etc/passwd and /tmp.
pub fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0, mode),
            dir,
            &[][..],
        )
        .unwrap();
    }
    let bin = std::fs::read(busybox()).expect("read busybox");
    b.append_data(
        &mut header(tar::EntryType::Regular, bin.len(), 0o755),
        "bin/busybox",
        &bin[..],
    )
    .unwrap();
    let list = Command::new(busybox())
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, text.len(), 0o644),
            path,
            text.as_bytes(),
        )
        .unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI image layout tarball of busybox named `name` (e.g.
/// `docker.io/library/busybox:1.36`) to `out`.
pub fn write_busybox_image(out: &Path, name: &str) {
    write_busybox_image_with_cmd(out, name, &["sh"]);
}

/// Like [`write_busybox_image`], with its own default command (so a different image ID).
pub fn write_busybox_image_with_cmd(out: &Path, name: &str, cmd: &[&str]) {
    let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    write_busybox_image_with(out, name, cmd, &[path]);
}

/// Like [`write_busybox_image`], with its own default command and environment.
pub fn write_busybox_image_with(out: &Path, name: &str, cmd: &[&str], env: &[&str]) {
    let layer = busybox_layer();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": cmd, "Env": env},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]},
    }))
    .unwrap();
    let desc = |mt: &str, d: &[u8]| serde_json::json!({"mediaType": mt, "digest": format!("sha256:{}", sha(d)), "size": d.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let mut mdesc = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    mdesc["annotations"] = serde_json::json!({"io.containerd.image.name": name});
    let index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]})).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
        (format!("blobs/sha256/{}", sha(&manifest)), manifest.clone()),
        (format!("blobs/sha256/{}", sha(&config)), config.clone()),
        (format!("blobs/sha256/{}", sha(&layer)), layer.clone()),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, data.len(), 0o644),
            path,
            &data[..],
        )
        .unwrap();
    }
    let mut f = std::fs::File::create(out).expect("image file");
    f.write_all(&b.into_inner().unwrap()).unwrap();
}
