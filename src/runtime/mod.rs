//! Container runtime on youki's `libcontainer`, driven from small single-threaded processes (the
//! kinglet binary re-executed), never from the multi-threaded kubelet itself (libcontainer
//! clones, chdirs and changes the caller's process-wide state):
//! - `kinglet supervise <dir>`: one per container; starts it, owns its stdio (the CRI log),
//!   reaps it and records its exit. Supervisors outlive kinglet restarts.
//! - `kinglet sandbox <dir>`: makes a pod's network, IPC and UTS namespaces and pins them.
//! - `kinglet exec <dir> -- cmd`: runs a process in a running container.
//!
//! A container lives in `<data-dir>/agent/containers/<id>/`: `meta.json` (what the kubelet
//! asked for), `bundle/config.json` (the OCI spec), `rootfs`/`upper`/`work` (its overlay),
//! `state/` (libcontainer's), `status.json` (pid, start, exit; written by the supervisor).

pub mod cgroups;
pub mod exec;
pub mod logs;
mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod supervisor;
pub mod tty;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the kubelet records about a container it creates.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub id: String,
    pub pod_uid: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub container_name: String,
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    /// Image layer directories, top first.
    pub lower_dirs: Vec<PathBuf>,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: usize,
    /// cgroup path (below every controller's mount), as in the spec.
    pub cgroup_path: String,
    pub created_at: String,
    /// The container keeps a stdin that `kubectl attach` writes to (`stdin: true`); with
    /// `stdin_once`, it is closed when the first attach session ends.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// The container runs on a terminal (`tty: true`).
    #[serde(default)]
    pub tty: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub pid: Option<i32>,
    pub started_at: Option<String>,
    pub exit: Option<ExitState>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExitState {
    pub code: i32,
    /// Completed, Error, OOMKilled or StartError, as the kubelet reports them.
    pub reason: String,
    pub message: String,
    pub finished_at: String,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A container's directory.
#[derive(Clone, Debug)]
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    pub fn meta_path(&self) -> PathBuf {
        self.0.join("meta.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.0.join("bundle")
    }
    pub fn state_root(&self) -> PathBuf {
        self.0.join("state")
    }
    /// The supervisor's socket for attaching to the container's stdin.
    pub fn attach_socket(&self) -> PathBuf {
        self.0.join("attach.sock")
    }
    /// The supervisor's socket for terminal size changes ("<width> <height>" lines).
    pub fn resize_socket(&self) -> PathBuf {
        self.0.join("resize.sock")
    }
    /// Where libcontainer sends the container's terminal to the supervisor.
    pub fn console_socket(&self) -> PathBuf {
        self.0.join("console.sock")
    }
    fn lock_path(&self) -> PathBuf {
        self.0.join("supervisor.lock")
    }
    fn status_path(&self) -> PathBuf {
        self.0.join("status.json")
    }

    pub fn meta(&self) -> anyhow::Result<Meta> {
        Ok(serde_json::from_slice(&fs::read(self.meta_path())?)?)
    }

    pub fn status(&self) -> Status {
        fs::read(self.status_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_status(&self, s: &Status) -> anyhow::Result<()> {
        let tmp = self.0.join("status.json.tmp");
        fs::write(&tmp, serde_json::to_vec(s)?)?;
        fs::rename(tmp, self.status_path())?;
        Ok(())
    }

    /// Whether a supervisor still runs for this container (it holds the lock for life).
    pub fn supervised(&self) -> bool {
        let Ok(f) = fs::OpenOptions::new().write(true).open(self.lock_path()) else {
            return false;
        };
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    }
}

/// The runtime of one node: where containers live and how to start their supervisors.
#[derive(Clone)]
pub struct Runtime {
    root: PathBuf,
    exe: PathBuf,
}

impl Runtime {
    pub fn new(data_dir: &Path) -> anyhow::Result<Runtime> {
        let root = data_dir.join("agent/containers");
        fs::create_dir_all(&root)?;
        Ok(Runtime {
            root,
            exe: std::env::current_exe().context("finding the kinglet binary")?,
        })
    }

    pub fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.root.join(id))
    }

    /// Every container directory on this node.
    pub fn list(&self) -> Vec<ContainerDir> {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| ContainerDir(e.path()))
            .collect()
    }

    /// Creates and starts a container; returns once it runs or has failed to start.
    pub fn start(&self, meta: &Meta, spec: &oci_spec::runtime::Spec) -> anyhow::Result<Status> {
        let dir = self.dir(&meta.id);
        fs::create_dir_all(dir.bundle())?;
        fs::create_dir_all(dir.state_root())?;
        fs::write(dir.meta_path(), serde_json::to_vec_pretty(meta)?)?;
        fs::write(
            dir.bundle().join("config.json"),
            serde_json::to_vec_pretty(spec)?,
        )?;
        self.spawn_detached(&["supervise".as_ref(), dir.0.as_os_str()])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = dir.status();
            if s.pid.is_some() || s.exit.is_some() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                anyhow::bail!("container {} did not start within 60 s", meta.id);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a helper subcommand in its own session, detached from kinglet.
    fn spawn_detached(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting a container supervisor")?;
        // The supervisor keeps running; reap it when it ends so it leaves no zombie.
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// Sends `signal` to the container's init process if it still runs.
    pub fn signal(&self, id: &str, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let dir = self.dir(id);
        let status = dir.status();
        if let (Some(pid), None) = (status.pid, &status.exit)
            && dir.supervised()
        {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        }
        Ok(())
    }

    /// Removes an exited container's directory.
    pub fn remove(&self, id: &str) -> anyhow::Result<()> {
        let dir = self.dir(id);
        if dir.supervised() {
            anyhow::bail!("container {id} is still running");
        }
        rootfs::unmount(&dir);
        fs::remove_dir_all(&dir.0).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        Ok(())
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }
}
