//! Helpers shared by the benchmarks (each bench is its own crate and includes this file).

#![allow(dead_code)]

pub mod join;

/// A count from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..1) of ascending `sorted` values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sorted samples in ms as "p50, p99, max", or "p50, max" when there are too few samples for
/// a p99 to be more than the maximum.
#[allow(dead_code)] // not every benchmark prints latencies
pub fn spread(ms: &[f64]) -> String {
    let max = ms.last().copied().unwrap_or(f64::NAN);
    let p50 = percentile(ms, 0.5);
    if ms.len() >= 100 {
        let p99 = percentile(ms, 0.99);
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms")
    } else {
        format!("p50 {p50:.1} ms, max {max:.1} ms")
    }
}

/// Resident memory of a process in MiB: all of it, and its anonymous and file-backed parts
/// (pages of the binary, shared with every other kinglet process and reclaimable).
pub struct Rss {
    pub total: f64,
    pub anon: f64,
    pub file: f64,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB ({:.1} anonymous, {:.1} file-backed)",
            self.total, self.anon, self.file
        )
    }
}

/// Resident memory of process `pid`.
pub fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Rss {
        total: kib("VmRSS:") / 1024.0,
        anon: kib("RssAnon:") / 1024.0,
        file: kib("RssFile:") / 1024.0,
    }
}

/// A client for the server whose kubeconfig is (or will be) at `kubeconfig`, once it answers;
/// panics after `secs`.
pub async fn wait_for_client(kubeconfig: &std::path::Path, secs: u64) -> kube::Client {
    let start = std::time::Instant::now();
    loop {
        if kubeconfig.exists() {
            let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("config");
            let c = kube::Client::try_from(cfg).expect("client");
            if c.apiserver_version().await.is_ok() {
                return c;
            }
        }
        assert!(start.elapsed().as_secs() < secs, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `kinglet server` on loopback with its state under `dir` (kubeconfig at `dir/kubeconfig`, an
/// empty config file), output discarded; the bench adds its own flags.
pub fn server_command(
    mut cmd: std::process::Command,
    dir: &std::path::Path,
) -> std::process::Command {
    std::fs::write(dir.join("config.yaml"), "").expect("config file");
    cmd.args([
        "server",
        "--bind-address",
        "127.0.0.1",
        "--advertise-address",
        "127.0.0.1",
    ])
    .arg("--data-dir")
    .arg(dir.join("data"))
    .arg("--write-kubeconfig")
    .arg(dir.join("kubeconfig"))
    .arg("--config")
    .arg(dir.join("config.yaml"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    cmd
}

/// `kinglet server` with its node for a bench whose server runs in a test host (`cmd` runs
/// kinglet there): node address `node_ip`, the host's cgroup parent, upstream DNS on the
/// host's loopback only, log (no colours) at `dir/server.log`.
pub fn node_server(
    cmd: std::process::Command,
    dir: &std::path::Path,
    cgroup_root: &str,
    node_ip: &str,
) -> std::process::Command {
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").expect("resolv.conf");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("server log");
    let mut cmd = server_command(cmd, dir);
    cmd.args([
        "--node-name",
        "bench",
        "--cgroup-root",
        cgroup_root,
        "--node-ip",
        node_ip,
    ])
    .arg("--pod-log-dir")
    .arg(dir.join("logs"))
    .arg("--run-dir")
    .arg(dir.join("run"))
    .arg("--resolv-conf")
    .arg(&resolv)
    .env("NO_COLOR", "1")
    .stderr(log);
    cmd
}

/// The multi-threaded runtime every bench drives its clients on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Prints the machine line every bench result starts with.
pub fn print_machine() {
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH
    );
}

/// A `/proc/<pid>/status` memory line (`VmHWM:`, `VmRSS:`, ...) in MiB; 0 when absent.
pub fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    });
    kib.unwrap_or(0.0) / 1024.0
}

/// The median of ascending `sorted` values (the mean of the middle two for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis start at field 3 (state); utime and
    // stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}
