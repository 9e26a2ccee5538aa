//! Pod sync: bring what runs on this node in line with the pods bound to it. One sync of a pod:
//! sandbox, volumes, init containers in order, then containers (restart policy with back-off),
//! and the pod's status; for a deleted pod, graceful stop (SIGTERM, grace period, SIGKILL),
//! clean-up, and the final removal from the API.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use nix::sys::signal::Signal;

use super::Kubelet;
use super::containers::{self, Record};

/// Restart back-off: first restart at once, then 10 s doubling up to 5 min.
pub fn backoff(restarts: u32) -> Duration {
    if restarts <= 1 {
        return Duration::ZERO;
    }
    Duration::from_secs((10u64 << (restarts - 2).min(5)).min(300))
}

fn seconds_since(rfc3339: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0
        })
        .unwrap_or(f64::MAX)
}

/// What the kubelet could not do for a container, shown as its waiting state.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Kubelet {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("agent/pods").join(uid)
    }

    /// The pod's network interface; none for `hostNetwork` pods, which use the node's.
    /// The network namespace the pod's containers are in (probes and hooks connect from there):
    /// the sandbox's, or the node's own for host-network pods.
    pub fn pod_netns(&self, pod: &Pod) -> std::path::PathBuf {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return "/proc/self/ns/net".into();
        }
        let uid = pod.uid().unwrap_or_default();
        kinglet_runtime::sandbox::pin(&self.pod_dir(&uid).join("sandbox"), "net")
    }

    pub fn pod_interface(
        &self,
        pod: &Pod,
    ) -> anyhow::Result<Option<kinglet_network::PodInterface>> {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Ok(None);
        }
        let uid = pod.uid().unwrap_or_default();
        Ok(Some(kinglet_network::PodInterface {
            ip: self.ipam.allocate(&uid)?,
            prefix: self.ipam.subnet().prefix_len(),
            gateway: self.ipam.gateway(),
            host_veth: kinglet_network::host_veth_name(&uid),
        }))
    }

    /// The pod's address, if it has one of its own.
    pub fn pod_ip(&self, uid: &str) -> Option<std::net::Ipv4Addr> {
        self.ipam.address_of(uid)
    }

    /// One sync of one pod.
    pub async fn sync_pod(self: &Arc<Self>, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let records = self.records_of(&uid);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod, &records).await;
        }
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            self.stop_all(pod, &records, Duration::ZERO).await;
            return Ok(());
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        if let Err(e) = self.prepare(pod).await {
            tracing::warn!(pod = %pod.name_any(), "preparing the pod: {e:#}");
            // As upstream: the containers wait (ContainerCreating, or PodInitializing behind
            // init containers) and the cause is an event.
            let (reason, note) = match e.downcast_ref::<super::volumes::MountFailed>() {
                Some(m) => ("FailedMount", m.to_string()),
                None => (
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e:#}"),
                ),
            };
            self.events.event(pod, true, reason, note).await;
            return self.report(pod, &waiting).await;
        }
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        // Init containers, one at a time, each to success.
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let latest = records.get(&c.name).and_then(|r| r.last());
            match latest.map(|r| &r.status.exit) {
                Some(Some(exit)) if exit.code == 0 => continue,
                Some(None) if latest.is_some_and(|r| r.running()) => {
                    initialized = false;
                    break;
                }
                Some(Some(_)) if policy == "Never" => {
                    initialized = false;
                    break;
                }
                _ => {
                    initialized = false;
                    self.ensure_started(pod, c, records.get(&c.name), &mut waiting)
                        .await;
                    break;
                }
            }
        }
        if initialized {
            for c in &spec.containers {
                let history = records.get(&c.name);
                let latest = history.and_then(|r| r.last());
                let start = match latest {
                    None => true,
                    Some(r) if r.running() => false,
                    Some(r) => match &r.status.exit {
                        Some(exit) => match policy {
                            "Never" => false,
                            "OnFailure" => exit.code != 0,
                            _ => true,
                        },
                        // Lost its supervisor without recording an exit (node reboot).
                        None => policy != "Never",
                    },
                };
                if start {
                    self.ensure_started(pod, c, history, &mut waiting).await;
                } else if let Some(r) = latest.filter(|r| r.running()) {
                    self.probe(pod, c, r).await;
                }
            }
        }
        self.report(pod, &waiting).await
    }

    /// Runs the container's due probes; a failed liveness or startup probe kills it (the
    /// restart policy then starts it again).
    async fn probe(&self, pod: &Pod, c: &Container, r: &Record) {
        let id = r.meta.id.clone();
        let running_for = r
            .status
            .started_at
            .as_deref()
            .map(seconds_since)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or_default();
        let dir = self.runtime.dir(&id).0;
        let netns = self.pod_netns(pod);
        let verdict = self
            .probe_manager
            .probe(&id, c, running_for, self.runtime.exe(), &dir, &netns)
            .await;
        if let super::probes::Verdict::Restart(msg) = verdict {
            tracing::info!(pod = %pod.name_any(), "{msg}");
            self.events.event(pod, false, "Killing", msg).await;
            let _ = self.runtime.signal(&id, Signal::SIGKILL);
            self.probe_manager.forget(&id);
        }
    }

    /// Starts the next attempt of `c` unless its back-off or image says to wait.
    async fn ensure_started(
        self: &Arc<Self>,
        pod: &Pod,
        c: &Container,
        history: Option<&Vec<Record>>,
        waiting: &mut HashMap<String, Waiting>,
    ) {
        let attempt = history
            .and_then(|h| h.last())
            .map(|r| r.meta.attempt + 1)
            .unwrap_or(0);
        if let Some(last) = history.and_then(|h| h.last()) {
            let finished = last
                .status
                .exit
                .as_ref()
                .map(|e| seconds_since(&e.finished_at))
                .unwrap_or(f64::MAX);
            let wait = backoff(attempt);
            if finished < wait.as_secs_f64() {
                if self.events.first_backoff(&last.meta.id) {
                    self.events
                        .event(
                            pod,
                            true,
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {} in pod {}_{}({})",
                                c.name,
                                pod.name_any(),
                                pod.namespace().unwrap_or_default(),
                                pod.uid().unwrap_or_default()
                            ),
                        )
                        .await;
                }
                waiting.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            wait.as_secs(),
                            c.name,
                            pod.name_any(),
                            pod.namespace().unwrap_or_default(),
                            pod.uid().unwrap_or_default()
                        ),
                    },
                );
                return;
            }
        }
        match self.start_container(pod, c, attempt).await {
            Ok(()) => {}
            Err(w) => {
                tracing::info!(pod = %pod.name_any(), container = %c.name, "{}: {}", w.reason, w.message);
                self.events
                    .event(pod, true, "Failed", format!("Error: {}", w.reason))
                    .await;
                waiting.insert(c.name.clone(), w);
            }
        }
    }

    /// Graceful stop of everything, clean-up, then the pod's removal from the API.
    async fn terminate(
        self: &Arc<Self>,
        pod: &Pod,
        records: &HashMap<String, Vec<Record>>,
    ) -> anyhow::Result<()> {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        self.stop_all(pod, records, Duration::from_secs(grace))
            .await;
        let uid = pod.uid().unwrap_or_default();
        self.cleanup(&uid).await;
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGTERM to every running container, SIGKILL to those still running after `grace`.
    async fn stop_all(&self, pod: &Pod, records: &HashMap<String, Vec<Record>>, grace: Duration) {
        let running: Vec<String> = records
            .values()
            .flatten()
            .filter(|r| r.running())
            .map(|r| r.meta.id.clone())
            .collect();
        if running.is_empty() {
            return;
        }
        tracing::info!(pod = %pod.name_any(), "stopping {} container(s)", running.len());
        for r in records.values().flatten().filter(|r| r.running()) {
            self.events
                .event(
                    pod,
                    false,
                    "Killing",
                    format!("Stopping container {}", r.meta.container_name),
                )
                .await;
        }
        let started = tokio::time::Instant::now();
        if !grace.is_zero() {
            self.pre_stop(pod, records, grace).await;
        }
        // At least 2 s between SIGTERM and SIGKILL, however long preStop took (as upstream).
        let grace = if grace.is_zero() {
            grace
        } else {
            grace
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(2))
        };
        let sig = if grace.is_zero() {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        for id in &running {
            let _ = self.runtime.signal(id, sig);
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let left: Vec<&String> = running
                .iter()
                .filter(|id| containers::is_running(&self.runtime.dir(id)))
                .collect();
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                for id in left {
                    let _ = self.runtime.signal(id, Signal::SIGKILL);
                }
                // Give the kernel a moment to finish them.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if running
                    .iter()
                    .all(|id| !containers::is_running(&self.runtime.dir(id)))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the preStop hooks of the running containers, together, within `grace`.
    async fn pre_stop(&self, pod: &Pod, records: &HashMap<String, Vec<Record>>, grace: Duration) {
        let spec = pod.spec.clone().unwrap_or_default();
        let netns = self.pod_netns(pod);
        let hooks = records
            .values()
            .flatten()
            .filter(|r| r.running())
            .filter_map(|r| {
                let c = spec
                    .containers
                    .iter()
                    .find(|c| c.name == r.meta.container_name)?;
                let h = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
                Some((c, h, self.runtime.dir(&r.meta.id).0))
            });
        let runs = hooks.map(|(c, h, dir)| {
            let netns = netns.clone();
            async move {
                let target = super::probes::Target {
                    c,
                    exe: self.runtime.exe(),
                    dir: &dir,
                    netns: &netns,
                };
                if !super::probes::hook(&target, h, grace).await {
                    self.events
                        .event(
                            pod,
                            true,
                            "FailedPreStopHook",
                            format!("PreStopHook failed for container {}", c.name),
                        )
                        .await;
                }
            }
        });
        futures::future::join_all(runs).await;
    }

    /// Removes the containers, sandbox and volumes of a pod that is gone.
    pub async fn cleanup(&self, uid: &str) {
        self.volume_manager.forget(uid);
        let records: Vec<Record> = self.records_of(uid).into_values().flatten().collect();
        for r in &records {
            self.probe_manager.forget(&r.meta.id);
            self.events.forget(&r.meta.id);
        }
        for r in &records {
            if !r.running() {
                let _ = self.runtime.remove(&r.meta.id);
            }
        }
        // The pod's cgroup is the parent of its containers'.
        if let Some(parent) = records
            .first()
            .and_then(|r| r.meta.cgroup_path.rsplit_once('/'))
            .map(|(p, _)| p.to_string())
        {
            kinglet_runtime::cgroups::remove(&parent);
        }
        let dir = self.pod_dir(uid);
        super::volumes::unmount_all(&dir);
        kinglet_runtime::sandbox::destroy(&dir.join("sandbox"));
        // The veth pair went with the namespace; the address is free once the pod is gone.
        if let Err(e) = self.ipam.release(uid) {
            tracing::warn!("releasing the address of pod {uid}: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        self.status_manager.forget(uid);
    }

    /// Reports the pod's status (the status manager skips it if unchanged). Without a server
    /// nothing is reported: what was not is reported once it is back.
    async fn report(&self, pod: &Pod, waiting: &HashMap<String, Waiting>) -> anyhow::Result<()> {
        if self.offline.is_down() {
            return Ok(());
        }
        let records = self.records_of(&pod.uid().unwrap_or_default());
        let status = super::status::compute(self, pod, &records, waiting);
        self.status_manager.set(&self.client, pod, status).await
    }
}
