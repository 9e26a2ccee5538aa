//! A single-member etcd (Debian's `etcd-server`, `/usr/bin/etcd`) on free loopback ports with
//! its own temporary data directory, for benchmarks of kinglet on etcd. Killed and removed when
//! dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Child,
    /// Its data directory (`data/`) and log (`etcd.log`).
    pub dir: tempfile::TempDir,
    /// Its client URL: kinglet's `--datastore-endpoint`.
    pub url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Etcd {
    /// Starts it and waits (30 s) until `etcdctl endpoint health` says it is healthy.
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "bench"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed for the etcd benchmark");
        let mut etcd = Etcd { child, dir, url };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!("etcd exited with {status}; see its log");
            }
            let healthy = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &etcd.url, "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return etcd;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd not healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Size of its backend database file in bytes.
    pub fn db_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.path().join("data/member/snap/db"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
