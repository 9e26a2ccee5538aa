//! `kinglet exec <container dir> -- cmd...`: runs a process in a running container's namespaces
//! and cgroup with this helper's stdio, and exits with the process's exit code.

use std::os::fd::OwnedFd;
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};

use super::ContainerDir;

pub fn main(dir: &Path, args: Vec<String>) -> ! {
    match run(&ContainerDir(dir.to_path_buf()), args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{e:#}");
            // 126: the command could not be run (as shells report it).
            std::process::exit(126)
        }
    }
}

fn dup(fd: i32) -> anyhow::Result<OwnedFd> {
    use std::os::fd::BorrowedFd;
    // SAFETY: 0, 1 and 2 are open for the life of this process.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(b.try_clone_to_owned()?)
}

fn run(dir: &ContainerDir, args: Vec<String>) -> anyhow::Result<i32> {
    let meta = dir.meta()?;
    let pid = ContainerBuilder::new(meta.id.clone(), SyscallType::default())
        .with_root_path(dir.state_root())?
        .with_stdin(dup(0)?)
        .with_stdout(dup(1)?)
        .with_stderr(dup(2)?)
        .as_tenant()
        .with_container_args(args)
        .with_detach(true)
        .build()
        .map_err(|e| anyhow::anyhow!("exec in container {}: {e}", meta.container_name))?;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => anyhow::bail!("waiting for the exec'd process: {e}"),
        }
    }
}
