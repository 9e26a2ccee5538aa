//! Node roles as k3s shows them (kubectl's ROLES column): the server's own node is a
//! control-plane node, agents have no role. The server sets the label: NodeRestriction keeps
//! kubelets from setting `node-role.kubernetes.io/*` labels on themselves.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

pub const CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";

/// Labels `node` as the control plane once it has registered.
pub async fn mark_control_plane(client: kube::Client, node: String) {
    let nodes: Api<Node> = Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": {CONTROL_PLANE: "true"}}});
    loop {
        match nodes
            .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            // Not registered yet: the kubelet registers within a second of start.
            Err(e) => tracing::debug!(%node, "control-plane role label: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
