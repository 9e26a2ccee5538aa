//! From a pod's container spec to a running container: image (pull policy), command, env, user,
//! mounts, cgroup and resources, then the runtime.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;

use super::Kubelet;
use super::pods::Waiting;
use kinglet_image::PullPolicy;
use kinglet_runtime::spec::ContainerConfig;
use kinglet_runtime::{ContainerDir, Meta, Status};

/// One container attempt on this node.
#[derive(Clone, Debug)]
pub struct Record {
    pub meta: Meta,
    pub status: Status,
    pub supervised: bool,
}

impl Record {
    pub fn running(&self) -> bool {
        self.supervised && self.status.pid.is_some() && self.status.exit.is_none()
    }
}

pub fn is_running(dir: &ContainerDir) -> bool {
    let s = dir.status();
    s.pid.is_some() && s.exit.is_none() && dir.supervised()
}

fn waiting(reason: &str, message: impl Into<String>) -> Waiting {
    Waiting {
        reason: reason.into(),
        message: message.into(),
    }
}

impl Kubelet {
    /// The containers of pod `uid`, by name, attempts in order.
    pub fn records_of(&self, uid: &str) -> HashMap<String, Vec<Record>> {
        let mut out: HashMap<String, Vec<Record>> = HashMap::new();
        for dir in self.runtime.list() {
            let Ok(meta) = dir.meta() else { continue };
            if meta.pod_uid != uid {
                continue;
            }
            let rec = Record {
                status: dir.status(),
                supervised: dir.supervised(),
                meta,
            };
            out.entry(rec.meta.container_name.clone())
                .or_default()
                .push(rec);
        }
        for v in out.values_mut() {
            v.sort_by(|a, b| {
                (a.meta.attempt, &a.meta.created_at).cmp(&(b.meta.attempt, &b.meta.created_at))
            });
        }
        out
    }

    /// The image for `c`, pulled as its policy says.
    async fn image_for(&self, pod: &Pod, c: &Container) -> Result<kinglet_image::Image, Waiting> {
        let name = c.image.clone().unwrap_or_default();
        let normalized = kinglet_image::normalize(&name)
            .map_err(|e| waiting("InvalidImageName", format!("{e:#}")))?;
        let policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &name);
        let present = self.images.find(&normalized).ok().flatten();
        match (policy, present) {
            (PullPolicy::Never, Some(img)) | (PullPolicy::IfNotPresent, Some(img)) => {
                self.events
                    .event(
                        pod,
                        false,
                        "Pulled",
                        format!("Container image \"{name}\" already present on machine"),
                    )
                    .await;
                Ok(img)
            }
            (PullPolicy::Never, None) => Err(waiting(
                "ErrImageNeverPull",
                format!("Container image \"{name}\" is not present with pull policy of Never"),
            )),
            _ => {
                let uid = pod.uid().unwrap_or_default();
                if self.pull_backoff.backing_off(&uid, &normalized) {
                    return Err(waiting(
                        "ImagePullBackOff",
                        format!("Back-off pulling image \"{name}\""),
                    ));
                }
                self.events
                    .event(pod, false, "Pulling", format!("Pulling image \"{name}\""))
                    .await;
                let started = std::time::Instant::now();
                let result = self.pull(pod, &normalized, &name).await;
                match &result {
                    Ok(_) => {
                        self.events
                            .event(
                                pod,
                                false,
                                "Pulled",
                                format!(
                                    "Successfully pulled image \"{name}\" in {:.3}s",
                                    started.elapsed().as_secs_f64()
                                ),
                            )
                            .await
                    }
                    Err(w) => {
                        self.events
                            .event(pod, true, "Failed", w.message.clone())
                            .await
                    }
                }
                self.pull_backoff.pulled(&uid, &normalized, result.is_ok());
                result
            }
        }
    }

    /// Pulls with the pod's pull secrets for the registry, then anonymously.
    async fn pull(
        &self,
        pod: &Pod,
        normalized: &str,
        name: &str,
    ) -> Result<kinglet_image::Image, Waiting> {
        let creds = super::secrets::pull_credentials(self, pod, normalized).await;
        let attempts = creds.iter().map(Some).chain(std::iter::once(None));
        let mut last = None;
        for cred in attempts {
            match self
                .images
                .pull(normalized, cred, &self.cfg.registries, &|line| {
                    tracing::info!("{line}")
                })
                .await
            {
                Ok(img) => return Ok(img),
                Err(e) => last = Some(e),
            }
        }
        let e = last.map(|e| format!("{e:#}")).unwrap_or_default();
        Err(waiting(
            "ErrImagePull",
            format!("failed to pull image \"{name}\": {e}"),
        ))
    }

    /// Creates and starts attempt `attempt` of `c`.
    pub async fn start_container(
        self: &Arc<Self>,
        pod: &Pod,
        c: &Container,
        attempt: u32,
    ) -> Result<(), Waiting> {
        let image = self.image_for(pod, c).await?;
        let run = self
            .images
            .run_config(&image)
            .map_err(|e| waiting("CreateContainerError", format!("{e:#}")))?;
        let uid = pod.uid().unwrap_or_default();
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let args = command(c, &run);
        if args.is_empty() {
            return Err(waiting("CreateContainerError", "no command specified"));
        }
        let env = super::env::container_env(self, pod, c, &run)
            .await
            .map_err(|e| waiting("CreateContainerConfigError", format!("{e:#}")))?;
        let sc = c.security_context.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        let (image_uid, image_gid) = parse_user(run.user.as_deref().unwrap_or(""));
        let uid_n = sc
            .run_as_user
            .or(psc.run_as_user)
            .map(|u| u as u32)
            .unwrap_or(image_uid);
        let gid_n = sc
            .run_as_group
            .or(psc.run_as_group)
            .map(|g| g as u32)
            .unwrap_or(image_gid);
        let mut additional_gids: Vec<u32> = psc
            .supplemental_groups
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g as u32)
            .collect();
        if let Some(fs_group) = psc.fs_group {
            additional_gids.push(fs_group as u32);
        }
        let pod_dir = self.pod_dir(&uid);
        let mounts = super::volumes::container_mounts(self, pod, c)
            .map_err(|e| waiting("CreateContainerConfigError", format!("{e:#}")))?;
        let resources = super::cgroups::resources(c, &self.capacity_memory);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroup_path = format!("{}/{}", self.pod_cgroup(pod), id);
        let caps = sc.capabilities.clone().unwrap_or_default();
        let seccomp = sc.seccomp_profile.clone().or(psc.seccomp_profile.clone());
        let seccomp = kinglet_runtime::seccomp::profile(
            seccomp.as_ref().map(|p| p.type_.as_str()),
            seccomp
                .as_ref()
                .and_then(|p| p.localhost_profile.as_deref()),
            &self.cfg.data_dir.join("agent/seccomp"),
        )
        .map_err(|e| waiting("CreateContainerConfigError", format!("{e:#}")))?;
        let config = ContainerConfig {
            args,
            env,
            cwd: c
                .working_dir
                .clone()
                .or(run.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid: uid_n,
            gid: gid_n,
            additional_gids,
            hostname: super::hostname(pod),
            sandbox_dir: pod_dir.join("sandbox"),
            host_network: pod.spec.as_ref().and_then(|s| s.host_network) == Some(true),
            mounts,
            cgroup_path: cgroup_path.clone(),
            cpu_shares: Some(resources.cpu_shares),
            cpu_quota: resources.cpu_quota,
            memory_limit: resources.memory_limit,
            oom_score_adj: super::cgroups::oom_score_adj(pod, c, self.capacity_memory),
            privileged: sc.privileged == Some(true),
            add_caps: caps.add.unwrap_or_default(),
            drop_caps: caps.drop.unwrap_or_default(),
            readonly_rootfs: sc.read_only_root_filesystem == Some(true),
            no_new_privileges: sc.allow_privilege_escalation == Some(false),
            seccomp,
            tty: c.tty == Some(true),
        };
        let oci = kinglet_runtime::spec::build(&config)
            .map_err(|e| waiting("CreateContainerError", format!("{e:#}")))?;
        let meta = Meta {
            id: id.clone(),
            pod_uid: uid.clone(),
            pod_namespace: ns.clone(),
            pod_name: pod.name_any(),
            container_name: c.name.clone(),
            attempt,
            image: c.image.clone().unwrap_or_default(),
            image_id: repo_digest(c.image.as_deref().unwrap_or_default(), &image.manifest),
            lower_dirs: self.images.layer_dirs(&image),
            log_path: self.log_path(pod, &c.name, attempt),
            log_max_bytes: self.cfg.container_log_max_size,
            log_max_files: self.cfg.container_log_max_files,
            cgroup_path,
            created_at: kinglet_runtime::now_rfc3339(),
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            tty: c.tty == Some(true),
            state_root: None, // the runtime's
        };
        let runtime = self.runtime.clone();
        let status = tokio::task::spawn_blocking(move || runtime.start(&meta, &oci))
            .await
            .map_err(|e| waiting("RunContainerError", e.to_string()))?
            .map_err(|e| waiting("RunContainerError", format!("{e:#}")))?;
        if let Some(exit) = status.exit.filter(|e| e.reason == "StartError") {
            return Err(waiting("RunContainerError", exit.message));
        }
        self.events
            .event(
                pod,
                false,
                "Created",
                format!("Created container: {}", c.name),
            )
            .await;
        self.events
            .event(
                pod,
                false,
                "Started",
                format!("Started container {}", c.name),
            )
            .await;
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let dir = self.runtime.dir(&id).0;
            let netns = self.pod_netns(pod);
            let target = super::probes::Target {
                c,
                exe: self.runtime.exe(),
                dir: &dir,
                netns: &netns,
            };
            if !super::probes::hook(&target, h, std::time::Duration::from_secs(30)).await {
                let _ = self.runtime.signal(&id, nix::sys::signal::Signal::SIGKILL);
                let msg = format!("PostStartHook failed for container {}", c.name);
                self.events
                    .event(pod, true, "FailedPostStartHook", msg.clone())
                    .await;
                return Err(waiting("PostStartHookError", msg));
            }
        }
        Ok(())
    }

    /// `/var/log/pods/<ns>_<pod>_<uid>/<container>/<attempt>.log`.
    pub fn log_path(&self, pod: &Pod, container: &str, attempt: u32) -> std::path::PathBuf {
        self.cfg
            .pod_log_dir
            .join(format!(
                "{}_{}_{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                pod.uid().unwrap_or_default()
            ))
            .join(container)
            .join(format!("{attempt}.log"))
    }
}

/// `docker.io/library/busybox@sha256:...`: the repository the container named, at the digest.
fn repo_digest(image: &str, manifest: &str) -> String {
    let name = kinglet_image::normalize(image).unwrap_or_else(|_| image.to_string());
    let repo = name.split('@').next().unwrap_or(&name);
    // The tag is after the last ':' that follows the last '/' (a registry port is not a tag).
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    format!("{repo}@{manifest}")
}

/// Kubernetes' rule: `command` replaces the entrypoint, `args` the image's cmd.
fn command(c: &Container, run: &kinglet_image::RunConfig) -> Vec<String> {
    let entrypoint = c
        .command
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| run.entrypoint.clone())
        .unwrap_or_default();
    let args = match (&c.command, &c.args) {
        (_, Some(a)) if !a.is_empty() => a.clone(),
        (Some(cmd), _) if !cmd.is_empty() => Vec::new(),
        _ => run.cmd.clone().unwrap_or_default(),
    };
    entrypoint.into_iter().chain(args).collect()
}

/// Numeric `uid[:gid]` from an image's `User` (names need the image's /etc/passwd: root).
fn parse_user(user: &str) -> (u32, u32) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    let gid = g.parse().unwrap_or(uid);
    (uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let run = kinglet_image::RunConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let c = |command: Option<Vec<&str>>, args: Option<Vec<&str>>| Container {
            command: command.map(|v| v.into_iter().map(String::from).collect()),
            args: args.map(|v| v.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        assert_eq!(command(&c(None, None), &run), ["/ep", "default"]);
        assert_eq!(command(&c(None, Some(vec!["x"])), &run), ["/ep", "x"]);
        assert_eq!(command(&c(Some(vec!["sh"]), None), &run), ["sh"]);
        assert_eq!(
            command(&c(Some(vec!["sh"]), Some(vec!["-c"])), &run),
            ["sh", "-c"]
        );
        assert_eq!(parse_user("1000:2000"), (1000, 2000));
        assert_eq!(
            repo_digest("127.0.0.1:5000/test/bb:v1", "sha256:ab"),
            "127.0.0.1:5000/test/bb@sha256:ab"
        );
        assert_eq!(
            repo_digest("busybox", "sha256:ab"),
            "docker.io/library/busybox@sha256:ab"
        );
        assert_eq!(parse_user(""), (0, 0));
    }
}
