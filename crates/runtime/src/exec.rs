//! `kinglet exec <container dir> -- cmd...`: runs a process in a running container's namespaces
//! and cgroup with this helper's stdio, and exits with the process's exit code. With
//! `--console-socket` the process gets a terminal instead, whose controlling end libcontainer
//! sends to that socket (the kubelet listens there).

use std::os::fd::OwnedFd;
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};

use super::ContainerDir;

pub fn main(dir: &Path, console_socket: Option<&Path>, args: Vec<String>) -> ! {
    match run(&ContainerDir(dir.to_path_buf()), console_socket, args) {
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

/// The container's own process settings (user, env, capabilities, cwd) with `args` on a terminal,
/// written where libcontainer reads an exec'd process from.
fn terminal_process(dir: &ContainerDir, args: Vec<String>) -> anyhow::Result<std::path::PathBuf> {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.bundle().join("config.json"))?)?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(true);
    let path = dir.0.join(format!("exec-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&process)?)?;
    Ok(path)
}

fn run(
    dir: &ContainerDir,
    console_socket: Option<&Path>,
    args: Vec<String>,
) -> anyhow::Result<i32> {
    let meta = dir.meta()?;
    let builder = ContainerBuilder::new(meta.id.clone(), SyscallType::default())
        .with_root_path(dir.state_root(&meta))?;
    let (tenant, process_file) = match console_socket {
        Some(socket) => {
            let file = terminal_process(dir, args)?;
            let t = builder
                .with_console_socket(Some(socket))
                .as_tenant()
                .with_process(Some(&file));
            (t, Some(file))
        }
        None => (
            builder
                .with_stdin(dup(0)?)
                .with_stdout(dup(1)?)
                .with_stderr(dup(2)?)
                .as_tenant()
                .with_container_args(args),
            None,
        ),
    };
    let built = tenant.with_detach(true).build();
    if let Some(f) = process_file {
        let _ = std::fs::remove_file(f);
    }
    let pid =
        built.map_err(|e| anyhow::anyhow!("exec in container {}: {e}", meta.container_name))?;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => anyhow::bail!("waiting for the exec'd process: {e}"),
        }
    }
}
