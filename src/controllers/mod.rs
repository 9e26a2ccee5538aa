//! Control loops that run inside `kinglet server`.

mod gc;

use std::sync::Arc;

use crate::apiserver::Api;

/// Starts every controller.
pub fn start(api: Arc<Api>) {
    gc::GarbageCollector::spawn(api);
}
