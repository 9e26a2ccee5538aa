//! An exclusive `flock` on a store's lock file, held while the guard lives: the stores on disk
//! (images, pod addresses) are shared by threads, the CLI and a restarted kinglet.

use std::fs;
use std::path::Path;

pub fn lock(path: &Path, what: &str) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking the {what}: {e}"))
}

/// Takes the lock at `path` without waiting and writes this process's pid into it, for a
/// process that must be alone on some state (a server on its data directory). When another
/// holds it, the error names `what` and the holder's pid.
pub fn hold_alone(path: &Path, what: &str) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    use std::io::{Seek, Write};
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let mut held = match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(path).unwrap_or_default();
            let holder = holder.trim();
            let pid = if holder.is_empty() {
                "unknown".to_string()
            } else {
                holder.to_string()
            };
            anyhow::bail!("{what} is in use by another kinglet process (pid {pid})");
        }
        Err((_, e)) => anyhow::bail!("locking {}: {e}", path.display()),
    };
    held.set_len(0)?;
    held.rewind()?;
    writeln!(held, "{}", std::process::id())?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = hold_alone(&path, "the data directory").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        let err = hold_alone(&path, "the data directory")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "the data directory is in use by another kinglet process (pid {})",
                std::process::id()
            )
        );
        drop(first);
        assert!(
            hold_alone(&path, "the data directory").is_ok(),
            "free once released"
        );
    }
}
