//! A container's root file system: an overlay of its image's layers (read-only, shared) under a
//! writable directory of its own.

use std::fs;

use anyhow::Context;
use nix::mount::{MntFlags, MsFlags};

use super::{ContainerDir, Meta};

pub fn mount(dir: &ContainerDir, meta: &Meta) -> anyhow::Result<()> {
    let (rootfs, upper, work) = (
        dir.0.join("rootfs"),
        dir.0.join("upper"),
        dir.0.join("work"),
    );
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d)?;
    }
    if meta.lower_dirs.is_empty() {
        // A prepared root file system in the bundle (benchmarks compare runtimes on one).
        return Ok(());
    }
    let lower: Vec<String> = meta
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .with_context(|| {
        format!(
            "mounting the overlay root file system at {}",
            rootfs.display()
        )
    })
}

/// Unmounts the root file system if mounted (idempotent).
pub fn unmount(dir: &ContainerDir) {
    let _ = nix::mount::umount2(&dir.0.join("rootfs"), MntFlags::MNT_DETACH);
}
