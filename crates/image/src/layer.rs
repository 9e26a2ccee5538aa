//! Unpacking one layer: a tar stream (plain, gzip or zstd) into its own directory, with OCI
//! whiteouts turned into overlayfs' (a 0/0 character device for a deleted path, the
//! `trusted.overlay.opaque` attribute for an opaque directory), so the layer directories stack
//! as overlay lower directories unchanged.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Wraps `r` in the decompressor its first bytes call for.
pub fn decompressed<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else {
        Box::new(r)
    })
}

/// Unpacks the layer blob at `blob` into `dir` (created), checking that the uncompressed
/// stream's digest is `diff_id`.
pub fn unpack(blob: &Path, dir: &Path, diff_id: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let file = fs::File::open(blob)?;
    let mut stream = Hashing {
        inner: decompressed(file)?,
        hasher: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut stream);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let Some(rel) = clean(&path) else {
                bail!("layer entry {} escapes the layer", path.display());
            };
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == OPAQUE_MARKER {
                let parent = dir.join(rel.parent().unwrap_or(Path::new("")));
                fs::create_dir_all(&parent)?;
                xattr::set(&parent, "trusted.overlay.opaque", b"y")
                    .with_context(|| format!("marking {} opaque", parent.display()))?;
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let parent = dir.join(rel.parent().unwrap_or(Path::new("")));
                fs::create_dir_all(&parent)?;
                let target = parent.join(hidden);
                let _ = fs::remove_file(&target);
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .with_context(|| format!("whiteout {}", target.display()))?;
            } else if !entry.unpack_in(dir)? {
                bail!("layer entry {} escapes the layer", path.display());
            }
        }
    }
    // Read what tar left (end-of-archive padding) so the digest covers the whole stream.
    io::copy(&mut stream, &mut io::sink())?;
    let got = format!("sha256:{}", hex::encode(stream.hasher.finalize()));
    if got != diff_id {
        bail!("layer content {got} does not match its diff ID {diff_id}");
    }
    Ok(())
}

/// `path` made relative with `.` removed; `None` if it climbs out with `..`.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}
