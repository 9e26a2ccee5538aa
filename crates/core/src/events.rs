//! Event recording: what a component needs to write events about the objects it handles.

use std::sync::Arc;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// A component's API client and its event recorder (events.k8s.io, as kube-rs writes them).
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: kube::Client, controller: &str) -> Arc<Context> {
        let reporter = Reporter {
            controller: controller.into(),
            instance: None,
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        })
    }

    /// Records an event about `obj` (best effort: a failed event never fails a reconcile).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!("event {reason}: {e}");
        }
    }
}
