//! Resource usage for `/stats/summary` (kubelet stats v1alpha1), which the API server turns into
//! `metrics.k8s.io`. CPU and memory come from the containers' cgroups and from /proc for the
//! node; the kubelet samples every 10 s and keeps the previous sample, so a CPU rate
//! (`usageNanoCores`) is there on the first request, as cAdvisor's housekeeping makes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Kubelet, lock};
use kinglet_runtime::{Runtime, cgroups};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct CpuSample {
    at: Instant,
    time: DateTime<Utc>,
    /// Cumulative CPU time, nanoseconds.
    total_ns: u64,
}

/// The last two CPU samples per key ("" for the node, else a container ID).
#[derive(Default)]
pub struct Sampler {
    cpu: Mutex<HashMap<String, (Option<CpuSample>, CpuSample)>>,
}

/// What a sample reports of CPU: the cumulative time and the rate over the last interval.
struct Cpu {
    time: DateTime<Utc>,
    total_ns: u64,
    nano_cores: Option<u64>,
}

impl Sampler {
    /// Takes a CPU sample of the node and of every running container of `runtime`.
    pub fn sample(&self, runtime: &Runtime) {
        if let Some(ns) = node_cpu_ns() {
            self.record("", ns);
        }
        let mut live = std::collections::HashSet::new();
        for dir in runtime.list() {
            let Ok(meta) = dir.meta() else { continue };
            if super::containers::is_running(&dir)
                && let Some(ns) = cgroup_cpu_ns(&meta.cgroup_path)
            {
                self.record(&meta.id, ns);
                live.insert(meta.id);
            }
        }
        self.retain(&|k| live.contains(k));
    }

    fn record(&self, key: &str, total_ns: u64) {
        let now = CpuSample {
            at: Instant::now(),
            time: Utc::now(),
            total_ns,
        };
        let mut cpu = lock(&self.cpu);
        let prev = cpu.get(key).map(|(_, last)| *last);
        cpu.insert(key.to_string(), (prev, now));
    }

    fn cpu(&self, key: &str) -> Option<Cpu> {
        let cpu = lock(&self.cpu);
        let (prev, last) = cpu.get(key)?;
        let nano_cores = prev.and_then(|p| {
            let secs = last.at.duration_since(p.at).as_secs_f64();
            (secs > 0.0 && last.total_ns >= p.total_ns)
                .then(|| ((last.total_ns - p.total_ns) as f64 / secs) as u64)
        });
        Some(Cpu {
            time: last.time,
            total_ns: last.total_ns,
            nano_cores,
        })
    }

    /// Forgets containers that are gone.
    fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        lock(&self.cpu).retain(|k, _| k.is_empty() || keep(k));
    }
}

/// Cumulative CPU time of the cgroup at `path`, nanoseconds.
fn cgroup_cpu_ns(path: &str) -> Option<u64> {
    if cgroups::unified() {
        let stat = cgroups::read("cpu", path, "cpu.stat")?;
        stat_value(&stat, "usage_usec").map(|us| us * 1000)
    } else {
        cgroups::read("cpuacct", path, "cpuacct.usage")?
            .trim()
            .parse()
            .ok()
    }
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Memory of the cgroup at `path`: (usage, working set, rss) in bytes.
fn cgroup_memory(path: &str) -> Option<(u64, u64, u64)> {
    let (usage_file, inactive_key, rss_key) = if cgroups::unified() {
        ("memory.current", "inactive_file", "anon")
    } else {
        ("memory.usage_in_bytes", "total_inactive_file", "total_rss")
    };
    let usage: u64 = cgroups::read("memory", path, usage_file)?
        .trim()
        .parse()
        .ok()?;
    let stat = cgroups::read("memory", path, "memory.stat").unwrap_or_default();
    let inactive = stat_value(&stat, inactive_key).unwrap_or(0);
    let rss = stat_value(&stat, rss_key).unwrap_or(0);
    Some((usage, usage.saturating_sub(inactive), rss))
}

/// Cumulative busy CPU time of the whole machine, nanoseconds (from /proc/stat).
fn node_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(busy.saturating_mul(1_000_000_000 / hz))
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

/// The machine's memory capacity and what is available of it (capacity minus the working set),
/// in bytes: the kubelet's `memory.available`.
pub fn memory_available() -> (u64, u64) {
    let (total, _, working_set) = node_memory();
    (total, total.saturating_sub(working_set))
}

/// (total, usage, working set) of the machine's memory, in bytes.
fn node_memory() -> (u64, u64, u64) {
    let total = meminfo("MemTotal").unwrap_or(0);
    let usage = total.saturating_sub(meminfo("MemFree").unwrap_or(0));
    let working_set = usage.saturating_sub(meminfo("Inactive(file)").unwrap_or(0));
    (total, usage, working_set)
}

/// The most processes the kernel allows and how many there are.
pub fn pids() -> (u64, u64) {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(32768);
    let current = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0);
    (max, current as u64)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn cpu_json(c: &Cpu) -> Value {
    let mut v = json!({"time": time(c.time), "usageCoreNanoSeconds": c.total_ns});
    if let Some(n) = c.nano_cores {
        v["usageNanoCores"] = json!(n);
    }
    v
}

#[allow(
    clippy::unnecessary_cast,
    reason = "the statvfs fields are 32 bits on 32-bit ARM"
)]
fn fs_json(path: &std::path::Path) -> Value {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let block = s.fragment_size() as u64;
            json!({
                "time": time(Utc::now()),
                "availableBytes": (s.blocks_available() as u64) * block,
                "capacityBytes": (s.blocks() as u64) * block,
                "usedBytes": (s.blocks().saturating_sub(s.blocks_free()) as u64) * block,
                "inodesFree": s.files_free(),
                "inodes": s.files(),
                "inodesUsed": s.files().saturating_sub(s.files_free()),
            })
        }
        Err(_) => json!({"time": time(Utc::now())}),
    }
}

fn boot_time() -> Option<DateTime<Utc>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    DateTime::from_timestamp(secs, 0)
}

impl Kubelet {
    /// Working-set bytes of each pod with running containers, by pod UID.
    pub fn memory_by_pod(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for dir in self.runtime.list() {
            if let Ok(meta) = dir.meta()
                && super::containers::is_running(&dir)
                && let Some((_, ws, _)) = cgroup_memory(&meta.cgroup_path)
            {
                *out.entry(meta.pod_uid).or_default() += ws;
            }
        }
        out
    }

    /// The stats v1alpha1 `Summary` of this node and its running pods.
    pub fn summary(&self) -> Value {
        let now = Utc::now();
        let (total, usage, working_set) = node_memory();
        let (maxpid, curproc) = pids();
        let mut node = json!({
            "nodeName": self.cfg.node_name,
            "memory": {
                "time": time(now),
                "availableBytes": total.saturating_sub(working_set),
                "usageBytes": usage,
                "workingSetBytes": working_set,
                "rssBytes": usage.saturating_sub(meminfo("Cached").unwrap_or(0)),
            },
            "fs": fs_json(&self.cfg.data_dir),
            "runtime": {"imageFs": fs_json(&self.cfg.data_dir.join("agent"))},
            "rlimit": {"time": time(now), "maxpid": maxpid, "curproc": curproc},
        });
        if let Some(b) = boot_time() {
            node["startTime"] = json!(time(b));
        }
        if let Some(c) = self.stats.cpu("") {
            node["cpu"] = cpu_json(&c);
        }
        // Pods: their running containers, grouped.
        let mut pods: HashMap<String, Value> = HashMap::new();
        for dir in self.runtime.list() {
            let Ok(meta) = dir.meta() else { continue };
            if !super::containers::is_running(&dir) {
                continue;
            }
            let Some((usage, ws, rss)) = cgroup_memory(&meta.cgroup_path) else {
                continue;
            };
            // Not sampled yet: reported without a rate (metrics.k8s.io then leaves the pod out).
            let cpu = self.stats.cpu(&meta.id).unwrap_or(Cpu {
                time: now,
                total_ns: cgroup_cpu_ns(&meta.cgroup_path).unwrap_or(0),
                nano_cores: None,
            });
            let started = dir.status().started_at.unwrap_or_else(|| time(now));
            let container = json!({
                "name": meta.container_name,
                "startTime": started,
                "cpu": cpu_json(&cpu),
                "memory": {"time": time(now), "usageBytes": usage, "workingSetBytes": ws, "rssBytes": rss},
            });
            let pod = pods.entry(meta.pod_uid.clone()).or_insert_with(|| {
                json!({
                    "podRef": {"name": meta.pod_name, "namespace": meta.pod_namespace, "uid": meta.pod_uid},
                    "startTime": started,
                    "containers": [],
                    "cpu": {"time": time(cpu.time), "usageCoreNanoSeconds": 0, "usageNanoCores": 0},
                    "memory": {"time": time(now), "usageBytes": 0, "workingSetBytes": 0, "rssBytes": 0},
                })
            });
            let add = |v: &mut Value, by: u64| *v = json!(v.as_u64().unwrap_or(0) + by);
            add(&mut pod["cpu"]["usageCoreNanoSeconds"], cpu.total_ns);
            add(
                &mut pod["cpu"]["usageNanoCores"],
                cpu.nano_cores.unwrap_or(0),
            );
            add(&mut pod["memory"]["usageBytes"], usage);
            add(&mut pod["memory"]["workingSetBytes"], ws);
            add(&mut pod["memory"]["rssBytes"], rss);
            if let Some(list) = pod["containers"].as_array_mut() {
                list.push(container);
            }
        }
        let mut pods: Vec<Value> = pods.into_values().collect();
        pods.sort_by(|a, b| {
            a["podRef"]["name"]
                .as_str()
                .cmp(&b["podRef"]["name"].as_str())
        });
        json!({"node": node, "pods": pods})
    }
}

/// Samples forever, every [`SAMPLE_EVERY`].
pub async fn sample_forever(k: std::sync::Arc<Kubelet>) {
    loop {
        let kubelet = k.clone();
        let _ = tokio::task::spawn_blocking(move || kubelet.stats.sample(&kubelet.runtime)).await;
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_last_two_samples() {
        let s = Sampler::default();
        s.record("c", 1_000);
        assert!(s.cpu("c").unwrap().nano_cores.is_none());
        std::thread::sleep(Duration::from_millis(20));
        s.record("c", 1_000 + 10_000_000);
        let c = s.cpu("c").unwrap();
        // 10 ms of CPU in ~20 ms: about half a core.
        let cores = c.nano_cores.unwrap() as f64 / 1e9;
        assert!(cores > 0.05 && cores < 0.6, "{cores}");
        s.retain(&|_| false);
        assert!(s.cpu("c").is_none());
    }

    #[test]
    fn stat_files_parse() {
        assert_eq!(
            stat_value("usage_usec 42\nuser_usec 40\n", "usage_usec"),
            Some(42)
        );
        assert_eq!(stat_value("total_rss 7\n", "rss"), None);
        assert!(node_cpu_ns().unwrap() > 0);
    }
}
