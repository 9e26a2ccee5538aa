//! Events about pods, as `kubectl describe` shows them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;

use super::lock;

pub struct EventRecorder {
    context: Arc<kinglet_core::events::Context>,
    /// While the server is unreachable, events are dropped rather than waited on.
    offline: Arc<super::offline::Offline>,
    /// Containers whose back-off has been announced with an event already: a crash-looping
    /// container's pod is synced every second, and one `BackOff` event per attempt is enough.
    backoff_announced: Mutex<HashSet<String>>,
}

impl EventRecorder {
    pub fn new(client: kube::Client, offline: Arc<super::offline::Offline>) -> EventRecorder {
        EventRecorder {
            context: kinglet_core::events::Context::new(client, "kubelet"),
            offline,
            backoff_announced: Mutex::default(),
        }
    }

    /// Records an event about `pod`.
    pub async fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        if self.offline.is_down() {
            return;
        }
        self.context.event(pod, warning, reason, note).await;
    }

    /// Whether the back-off of container `id` is still to be announced (it counts as announced
    /// from now on).
    pub fn first_backoff(&self, id: &str) -> bool {
        lock(&self.backoff_announced).insert(id.to_string())
    }

    /// Forgets container `id`, removed with its pod.
    pub fn forget(&self, id: &str) {
        lock(&self.backoff_announced).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_back_off_is_announced_once_per_container() {
        // No request is made: the client only has to exist.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let offline = Arc::new(super::super::offline::Offline::new(
            "/nonexistent".as_ref(),
            false,
        ));
        let events = EventRecorder::new(kube::Client::try_from(config).unwrap(), offline);
        assert!(events.first_backoff("c1"));
        assert!(!events.first_backoff("c1"));
        assert!(events.first_backoff("c2"));
        events.forget("c1");
        assert!(events.first_backoff("c1"));
    }
}
