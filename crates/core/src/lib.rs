//! kinglet's shared vocabulary: what the control plane and the node both speak.
//!
//! Quantities and pod resources, label and field selectors, object and name helpers, pod
//! helpers, event recording, CronJob schedules, the shared watch cache and the data-dir lock.
//! It depends on no other kinglet crate; a helper that more than one component needs goes here.

pub mod cron;
pub mod events;
pub mod informers;
pub mod lockfile;
pub mod node_labels;
pub mod object;
pub mod pods;
pub mod resources;
pub mod selectors;

/// The Kubernetes API level kinglet serves (and its kubelet reports).
pub const K8S_GIT_VERSION: &str = "v1.33.0+kinglet";
