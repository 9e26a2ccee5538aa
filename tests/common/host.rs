//! A test host: a network and mount namespace of its own (held open by a `sleep` process) with
//! its own cgroup parent, so a node under test changes nothing on the machine. Dropping it kills
//! everything that ran inside and removes its cgroups.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node's address inside a test host (a documentation range: reachable only there).
pub const NODE_IP: &str = "192.0.2.10";

pub struct TestHost {
    holder: Child,
    /// The node's `--cgroup-root`.
    pub cgroup_root: String,
}

fn ns_link(pid: &str, ns: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

impl TestHost {
    pub fn new() -> TestHost {
        // Loopback, which also holds the node's own address (nothing leaves the host; this
        // machine's kernel has no dummy links).
        TestHost::with_setup(&format!(
            "ip link set lo up && ip addr add {NODE_IP}/32 dev lo"
        ))
    }

    /// A test host with loopback only, for plugging into a `cluster::Switch`.
    #[allow(dead_code)]
    pub fn bare() -> TestHost {
        TestHost::with_setup("ip link set lo up")
    }

    /// A test host whose network is set up by the shell commands `setup`.
    fn with_setup(setup: &str) -> TestHost {
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!("{setup}; exec sleep 1000000"))
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) is needed for test hosts");
        let pid = holder.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns_link(&pid, "net") == ns_link("self", "net") {
            assert!(
                Instant::now() < deadline,
                "test host namespaces not created"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Loopback must be up before anything binds to it.
        std::thread::sleep(Duration::from_millis(50));
        TestHost {
            cgroup_root: format!("/kinglet-test-{pid}"),
            holder,
        }
    }

    /// `kinglet cleanup [args]` in this host, which must succeed.
    #[allow(dead_code)]
    pub fn kinglet_cleanup(&self, args: &[&std::ffi::OsStr]) {
        let out = self
            .command(env!("CARGO_BIN_EXE_kinglet"))
            .arg("cleanup")
            .args(args)
            .output()
            .expect("run kinglet cleanup");
        assert!(
            out.status.success(),
            "kinglet cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program` run inside the test host's namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "-n", "--"])
            .arg(program);
        c
    }

    /// Mounts a fresh tmpfs at `dir` (created if missing) in the host's mount namespace.
    #[allow(dead_code)]
    pub fn mount_tmpfs(&self, dir: &std::path::Path) {
        self.mount_tmpfs_sized(dir, None);
    }

    /// The same, of at most `size` (mount's syntax: `24m`) when given.
    #[allow(dead_code)]
    pub fn mount_tmpfs_sized(&self, dir: &std::path::Path, size: Option<&str>) {
        std::fs::create_dir_all(dir).expect("tmpfs mount point");
        let mut mount = self.command("mount");
        if let Some(size) = size {
            mount.args(["-o", &format!("size={size}")]);
        }
        let ok = mount
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs at {}", dir.display());
    }

    /// Every process that ran in the host's mount namespace, except the holder.
    fn processes(&self) -> Vec<i32> {
        let mine = ns_link(&self.pid().to_string(), "mnt");
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| *p as u32 != self.pid() && ns_link(&p.to_string(), "mnt") == mine)
            .collect()
    }

    /// cgroup directories of this host, deepest first, across controllers.
    fn cgroups(&self) -> Vec<PathBuf> {
        fn walk(dir: PathBuf, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(e.path(), out);
                }
            }
            out.push(dir);
        }
        let rel = self.cgroup_root.trim_start_matches('/');
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(rel)];
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            roots.push(e.path().join(rel));
        }
        let mut out = Vec::new();
        for r in roots.into_iter().filter(|r| r.is_dir()) {
            walk(r, &mut out);
        }
        out
    }
}

fn kill(pid: i32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

impl TestHost {
    /// Kills every process of the host but its holder: containers first (they live in the
    /// host's cgroups), then kinglet and supervisors.
    pub fn kill_all(&self) {
        for _ in 0..50 {
            let mut any = false;
            for cg in self.cgroups() {
                for pid in std::fs::read_to_string(cg.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(p) = pid.trim().parse() {
                        kill(p);
                        any = true;
                    }
                }
            }
            for p in self.processes() {
                kill(p);
                any = true;
            }
            if !any {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What a power cut leaves: no processes, and none of the mounts below `dir` (container
    /// root file systems, pinned namespaces).
    #[allow(dead_code)]
    pub fn power_cut(&self, dir: &std::path::Path) {
        self.kill_all();
        let mounts =
            std::fs::read_to_string(format!("/proc/{}/mounts", self.pid())).unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(dir.to_str().unwrap_or("/nonexistent")))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = self.command("umount").args(["-l", p]).status();
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill_all();
        for cg in self.cgroups() {
            let _ = std::fs::remove_dir(cg);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
