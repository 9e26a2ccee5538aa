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
