//! Control loops that run inside `kinglet server`.

mod gc;
mod namespace;

use std::sync::Arc;

use crate::apiserver::Api;

/// Starts every controller.
pub fn start(api: Arc<Api>) {
    gc::GarbageCollector::spawn(api.clone());
    namespace::spawn(api);
}
