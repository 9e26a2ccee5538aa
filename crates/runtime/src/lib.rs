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
//! `status.json` (pid and start) and `exit.json` (how it ended), written once each by the
//! supervisor. libcontainer's own state is in `<run-dir>/containers/<id>/`, on a tmpfs like
//! runc's `/run/runc`: it means nothing after a reboot, and rewriting it on disk costs a flush.

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
    /// libcontainer's root directory; it keeps this container's state in `<root>/<id>`
    /// (containers made by older versions: `<dir>/state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_root: Option<PathBuf>,
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
    /// libcontainer's root directory for this container.
    pub fn state_root(&self, meta: &Meta) -> PathBuf {
        meta.state_root
            .clone()
            .unwrap_or_else(|| self.0.join("state"))
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
    fn exit_path(&self) -> PathBuf {
        self.0.join("exit.json")
    }

    pub fn meta(&self) -> anyhow::Result<Meta> {
        Ok(serde_json::from_slice(&fs::read(self.meta_path())?)?)
    }

    pub fn status(&self) -> Status {
        let mut status: Status = read_json(&self.status_path()).unwrap_or_default();
        // Supervisors of older versions wrote the exit into `status.json`.
        if let Some(exit) = read_json(&self.exit_path()) {
            status.exit = Some(exit);
        }
        status
    }

    /// Records that the container runs. Each file is written once and never replaced: on
    /// ext4, renaming over an existing file forces its data to disk first.
    fn write_started(&self, pid: i32, started_at: &str) -> anyhow::Result<()> {
        let status = Status {
            pid: Some(pid),
            started_at: Some(started_at.to_string()),
            exit: None,
        };
        write_json(&self.status_path(), &status)
    }

    /// Records how the container ended (or why it could not start).
    fn write_exit(&self, exit: &ExitState) -> anyhow::Result<()> {
        write_json(&self.exit_path(), exit)
    }

    /// Whether a supervisor still runs for this container (it holds the lock for life).
    pub fn supervised(&self) -> bool {
        let Ok(f) = fs::OpenOptions::new().write(true).open(self.lock_path()) else {
            return false;
        };
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Writes `path` whole or not at all: readers never see half a file.
fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(value)?)?;
    fs::rename(tmp, path)?;
    Ok(())
}

/// The runtime of one node: where containers live and how to start their supervisors.
#[derive(Clone)]
pub struct Runtime {
    root: PathBuf,
    /// libcontainer's root directory (`<run-dir>/containers`).
    state_root: PathBuf,
    exe: PathBuf,
}

impl Runtime {
    pub fn new(data_dir: &Path, run_dir: &Path) -> anyhow::Result<Runtime> {
        let root = data_dir.join("agent/containers");
        fs::create_dir_all(&root)?;
        let state_root = run_dir.join("containers");
        fs::create_dir_all(&state_root)
            .with_context(|| format!("creating {}", state_root.display()))?;
        Ok(Runtime {
            root,
            state_root,
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
        let meta = Meta {
            state_root: Some(self.state_root.clone()),
            ..meta.clone()
        };
        fs::create_dir_all(dir.bundle())?;
        fs::create_dir_all(dir.state_root(&meta))?;
        fs::write(dir.meta_path(), serde_json::to_vec_pretty(&meta)?)?;
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
        // libcontainer removes its state when the container ends; this catches a power cut.
        if let Ok(meta) = dir.meta() {
            remove_dir_if_any(&dir.state_root(&meta).join(&meta.id))?;
        }
        remove_dir_if_any(&dir.0)
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }
}

fn remove_dir_if_any(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_the_start_and_exit_files_and_the_older_single_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ContainerDir(tmp.path().to_path_buf());
        assert_eq!(dir.status(), Status::default());

        dir.write_started(42, "2026-11-28T10:00:00Z").unwrap();
        let running = dir.status();
        assert_eq!(running.pid, Some(42));
        assert!(running.exit.is_none());

        let exit = ExitState {
            code: 137,
            reason: "OOMKilled".into(),
            message: String::new(),
            finished_at: "2026-11-28T10:00:05Z".into(),
        };
        dir.write_exit(&exit).unwrap();
        let ended = dir.status();
        assert_eq!(ended.pid, Some(42));
        assert_eq!(ended.exit, Some(exit.clone()));

        // A container started by an older supervisor: one status.json with the exit inside.
        let old = tempfile::tempdir().unwrap();
        let legacy = Status {
            pid: Some(7),
            started_at: Some("2026-11-28T09:00:00Z".into()),
            exit: Some(exit),
        };
        fs::write(
            old.path().join("status.json"),
            serde_json::to_vec(&legacy).unwrap(),
        )
        .unwrap();
        assert_eq!(ContainerDir(old.path().to_path_buf()).status(), legacy);
    }

    #[test]
    fn containers_of_older_versions_keep_their_state_beside_them() {
        let meta: Meta = serde_json::from_str(
            r#"{"id":"c1","podUid":"","podNamespace":"","podName":"","containerName":"c",
                "attempt":0,"image":"","imageId":"","lowerDirs":[],"logPath":"/l",
                "logMaxBytes":1,"logMaxFiles":1,"cgroupPath":"/k/c1","createdAt":""}"#,
        )
        .unwrap();
        let dir = ContainerDir(PathBuf::from("/data/c1"));
        assert_eq!(dir.state_root(&meta), PathBuf::from("/data/c1/state"));
        let meta = Meta {
            state_root: Some("/run/kinglet/containers".into()),
            ..meta
        };
        assert_eq!(
            dir.state_root(&meta),
            PathBuf::from("/run/kinglet/containers")
        );
    }
}
