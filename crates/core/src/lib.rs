//! kinglet's shared vocabulary: what the control plane and the node both speak.
//!
//! Quantities and pod resources, label and field selectors, object and name helpers, pod
//! helpers, event recording, CronJob schedules, the shared watch cache, the data-dir lock and
//! the join protocol.
//! It depends on no other kinglet crate; a helper that more than one component needs goes here.

pub mod cron;
pub mod events;
pub mod informers;
pub mod join;
pub mod lockfile;
pub mod node_labels;
pub mod object;
pub mod pods;
pub mod resources;
pub mod selectors;
pub mod storage;

/// The Kubernetes API level kinglet serves (and its kubelet reports).
pub const K8S_GIT_VERSION: &str = "v1.33.0+kinglet";

/// This machine's architecture as Go names it (`amd64`, `arm64`).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A User-Agent in upstream's form: `kubelet/v1.33.0+kinglet (linux/amd64) kubernetes/<commit>`.
/// Upstream's components send it, and writes take their field manager from it.
pub fn user_agent(program: &str) -> String {
    format!(
        "{program}/{K8S_GIT_VERSION} (linux/{}) kubernetes/{}",
        go_arch(),
        option_env!("KINGLET_GIT_COMMIT").unwrap_or("unknown"),
    )
}
