//! `subPath` mounts that cannot leave their volume (the CVE-2017-1002101 class), as upstream's
//! `pkg/volume/util/subpath` does it: the path is walked one component at a time from an open
//! descriptor of the volume's root, each component opened with `O_NOFOLLOW` relative to its
//! parent. Links are followed only while they stay inside the volume (a ConfigMap key is a link
//! through `..data`); one that points out of it, by `..` or by an absolute path elsewhere, is
//! refused. Missing directories are made with `mkdirat` on the way, as upstream's
//! `SafeMakeDir`. The mount is then made from `/proc/self/fd/<n>` of the last descriptor, so
//! what gets mounted is exactly what was checked, whatever the container changes meanwhile.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};

/// The kernel's limit on links followed in one lookup.
const MAX_LINKS: usize = 40;

fn escape(sub: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("subPath {sub:?} leads out of its volume"),
    )
}

/// Opens `sub` inside the directory `root` without ever resolving a name outside it, and
/// returns an `O_PATH` descriptor of what it names. With `create`, missing directories are
/// made (with the mode of `root`, as upstream).
pub fn open_beneath(root: &Path, sub: &str, create: bool) -> io::Result<OwnedFd> {
    // The root itself is the kubelet's volume directory or the pod's hostPath: trusted, and
    // resolved once, here.
    let real_root = fs::canonicalize(root)?;
    let root_fd = nix::fcntl::open(
        &real_root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let dir_mode = Mode::from_bits_truncate(fstat(&root_fd)?.st_mode & 0o7777);
    let mut todo: VecDeque<OsString> = components(Path::new(sub));
    // The directories walked so far, the root first: `..` goes back one, never past the root.
    let mut stack: Vec<OwnedFd> = vec![root_fd];
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == "." || name.is_empty() {
            continue;
        }
        if name == ".." {
            if stack.len() == 1 {
                return Err(escape(sub));
            }
            stack.pop();
            continue;
        }
        let parent = stack.last().ok_or_else(|| escape(sub))?;
        let fd = match open_nofollow(parent, &name) {
            Err(Errno::ENOENT) if create => make_dir(parent, &name, dir_mode)?,
            other => other?,
        };
        let st = fstat(&fd)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            // An O_PATH descriptor of a link: read the link itself.
            let target = PathBuf::from(readlinkat(&fd, "")?);
            let rest = if target.is_absolute() {
                // Upstream resolves links on the node and accepts one that lands in the
                // volume again; anything else is out.
                let inside = target.strip_prefix(&real_root).map_err(|_| escape(sub))?;
                stack.truncate(1);
                components(inside)
            } else {
                components(&target)
            };
            for part in rest.into_iter().rev() {
                todo.push_front(part);
            }
            continue;
        }
        stack.push(fd);
    }
    stack.pop().ok_or_else(|| escape(sub))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn open_nofollow(dir: &OwnedFd, name: &OsString) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name.as_os_str(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `mkdirat` in `dir`, then the new directory opened without following a link (another
/// process may have raced it into one) and given `mode` whatever the umask.
fn make_dir(dir: &OwnedFd, name: &OsString, mode: Mode) -> io::Result<OwnedFd> {
    match mkdirat(dir, name.as_os_str(), mode) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = openat(
        dir,
        name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    fchmod(&fd, mode)?;
    Ok(fd)
}

/// Bind-mounts what `fd` names at `target` (made a directory or an empty file to match),
/// replacing whatever an earlier start mounted there.
pub fn bind(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    unmount(target);
    let is_dir = SFlag::from_bits_truncate(fstat(fd)?.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() == is_dir => {}
        Ok(m) if m.is_dir() => fs::remove_dir(target)?,
        Ok(_) => fs::remove_file(target)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if !target.exists() {
        if is_dir {
            fs::create_dir(target)?;
        } else {
            fs::write(target, b"")?;
        }
    }
    let source = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

/// Unmounts everything mounted at `target` (mounts may have stacked up); idempotent.
pub fn unmount(target: &Path) {
    for _ in 0..16 {
        // EINVAL: not (or no longer) a mount point; ENOENT: not there at all.
        if nix::mount::umount2(target, MntFlags::MNT_DETACH).is_err() {
            return;
        }
    }
}

/// Unmounts the subPath mounts below `dir` (`<volume>/<container>/<index>`).
pub fn unmount_all(dir: &Path) {
    let entries = |d: &Path| {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    for volume in entries(dir) {
        for container in entries(&volume) {
            for index in entries(&container) {
                unmount(&index);
            }
        }
    }
}

/// Whether `p` is a plain relative path (what the API allows for `subPath`).
pub fn is_relative_without_dotdot(p: &str) -> bool {
    Path::new(p)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    /// The device and inode `fd` names.
    fn id(fd: &OwnedFd) -> (u64, u64) {
        let st = fstat(fd).unwrap();
        (st.st_dev, st.st_ino)
    }

    fn id_of(p: &Path) -> (u64, u64) {
        let m = fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn links_inside_the_volume_are_followed_and_links_out_of_it_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        let v = tmp.path().join("volume");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(v.join("dir/sub")).unwrap();
        fs::write(v.join("dir/file"), "x").unwrap();
        // The layout of a ConfigMap volume: key -> ..data/key, ..data -> ..<stamp>.
        fs::create_dir_all(v.join("..2026_01_01")).unwrap();
        fs::write(v.join("..2026_01_01/key"), "k").unwrap();
        symlink("..2026_01_01", v.join("..data")).unwrap();
        symlink("..data/key", v.join("key")).unwrap();
        symlink("dir/sub", v.join("rel")).unwrap();
        symlink("../sub", v.join("dir/sub/up")).unwrap();
        symlink(v.join("dir"), v.join("abs_inside")).unwrap();
        symlink(&outside, v.join("abs_out")).unwrap();
        symlink("../outside", v.join("rel_out")).unwrap();
        symlink("../../..", v.join("dir/deep_out")).unwrap();
        symlink("loop", v.join("loop")).unwrap();

        let open = |sub: &str| open_beneath(&v, sub, false);
        assert_eq!(id(&open("dir/file").unwrap()), id_of(&v.join("dir/file")));
        assert_eq!(
            id(&open("key").unwrap()),
            id_of(&v.join("..2026_01_01/key"))
        );
        assert_eq!(id(&open("rel").unwrap()), id_of(&v.join("dir/sub")));
        assert_eq!(id(&open("rel/up").unwrap()), id_of(&v.join("dir/sub")));
        assert_eq!(id(&open("abs_inside").unwrap()), id_of(&v.join("dir")));
        assert_eq!(id(&open("./dir/.").unwrap()), id_of(&v.join("dir")));
        for out in [
            "abs_out",
            "rel_out",
            "dir/deep_out",
            "rel_out/x",
            "dir/../..",
            "..",
        ] {
            let err = open(out).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{out}: {err}");
        }
        assert_eq!(open("loop").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(
            open("missing").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert_eq!(
            open("dir/file/x").unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
    }

    #[test]
    fn missing_directories_are_made_inside_the_volume_only() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        let v = tmp.path().join("volume");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&v).unwrap();
        fs::set_permissions(&v, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&outside, v.join("escape")).unwrap();

        let fd = open_beneath(&v, "a/b", true).unwrap();
        assert_eq!(id(&fd), id_of(&v.join("a/b")));
        let mode = fs::metadata(v.join("a/b")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o777, "the volume's mode, not the umask's");
        assert!(open_beneath(&v, "escape/new", true).is_err());
        assert!(!outside.join("new").exists(), "nothing made outside");
    }

    /// Runs `f` on a thread in a mount namespace of its own, so the test's mounts touch nothing
    /// else.
    fn in_own_mount_namespace(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_mount_is_of_what_was_checked_even_if_swapped_for_a_link_after() {
        in_own_mount_namespace(|| {
            let tmp = tempfile::tempdir().unwrap();
            let outside = tmp.path().join("outside");
            let v = tmp.path().join("volume");
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("secret"), "node").unwrap();
            fs::create_dir_all(v.join("d")).unwrap();
            fs::write(v.join("d/mine"), "pod").unwrap();
            let fd = open_beneath(&v, "d", false).unwrap();
            // The container swaps the checked directory for a link out of the volume.
            fs::rename(v.join("d"), v.join("moved")).unwrap();
            symlink(&outside, v.join("d")).unwrap();
            let target = tmp.path().join("subpaths/v/c/0");
            bind(&fd, &target).unwrap();
            assert_eq!(fs::read_to_string(target.join("mine")).unwrap(), "pod");
            assert!(!target.join("secret").exists());
            // Again (a restart): the old mount is replaced, not stacked; a file works too.
            let file = open_beneath(&v, "moved/mine", false).unwrap();
            bind(&file, &target).unwrap();
            assert_eq!(fs::read_to_string(&target).unwrap(), "pod");
            unmount_all(&tmp.path().join("subpaths"));
            assert_eq!(fs::read(&target).unwrap(), b"", "unmounted: the empty file");
            assert_eq!(fs::read_to_string(v.join("moved/mine")).unwrap(), "pod");
        });
    }

    #[test]
    fn only_plain_relative_sub_paths_are_accepted() {
        for ok in ["a", "a/b", "./a", "a/./b"] {
            assert!(is_relative_without_dotdot(ok), "{ok}");
        }
        for bad in ["/etc", "..", "a/../..", "a/.."] {
            assert!(!is_relative_without_dotdot(bad), "{bad}");
        }
    }
}
