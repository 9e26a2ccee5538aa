//! Nodes: any name, the `spec.unschedulable` field selector, the `kubectl get nodes` columns, and
//! status kept on create (the kubelet registers a node with its status).

use serde_json::{Value, json};

use super::{KindBehaviour, NameCheck, any_name};
use crate::object::field_string;
use crate::registry::Resource;
use crate::table::{AGE, Columns, N, age, arr, name, none_if_empty, s};

pub struct Nodes;

impl KindBehaviour for Nodes {
    fn name_check(&self) -> Option<NameCheck> {
        Some(any_name)
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Status", "string", 0),
                ("Roles", "string", 0),
                AGE,
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ],
            node_row,
        );
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "spec.unschedulable" => Some(
                obj.pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            _ => field_string(obj, field),
        }
    }

    fn prepare_for_create(&self, _res: &Resource, _obj: &mut Value) {}
}

fn node_row(n: &Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    let ready = arr(n, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    status.push(match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".into(),
        _ => "NotReady".into(),
    });
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        arr(n, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == t)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(n),
        json!(status.join(",")),
        none_if_empty(roles.join(",")),
        age(n),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(n, "/status/nodeInfo/osImage")),
        json!(s(n, "/status/nodeInfo/kernelVersion")),
        json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}
