//! Side effects that follow a write: releasing Service allocations when a create fails or an
//! object goes away.

use serde_json::Value;

use super::Api;
use super::registry::Resource;

fn is_service(res: &Resource) -> bool {
    res.storage == (String::new(), "services".to_string())
}

pub fn create_failed(api: &Api, res: &Resource, obj: &Value) {
    if is_service(res) {
        api.alloc().release(obj);
    }
}

pub fn after_delete(api: &Api, res: &Resource, obj: &Value) {
    if is_service(res) {
        api.alloc().release(obj);
    }
}
