//! The join protocol between `kinglet agent` and its server (k3s's shape): the paths and
//! headers both sides use, and the cluster settings an agent takes from its server.

use serde::{Deserialize, Serialize};

/// The cluster CA bundle, served without authentication (the token carries its hash).
pub const CA_PATH: &str = "/cacerts";
/// The node's client certificate (`system:node:<name>`), for the token's secret.
pub const CLIENT_CERT_PATH: &str = "/v1-kinglet/client-kubelet.crt";
/// The kubelet's serving certificate, for the token's secret.
pub const SERVING_CERT_PATH: &str = "/v1-kinglet/serving-kubelet.crt";
/// The cluster's settings ([`ClusterSettings`]), for the token's secret.
pub const CLUSTER_PATH: &str = "/v1-kinglet/cluster";
pub const NODE_NAME_HEADER: &str = "kinglet-node-name";
pub const NODE_PASSWORD_HEADER: &str = "kinglet-node-password";
pub const NODE_IP_HEADER: &str = "kinglet-node-ip";
/// An agent's tunnel: a GET with its node client certificate, upgraded to [`TUNNEL_PROTOCOL`].
pub const CONNECT_PATH: &str = "/v1-kinglet/connect";
/// The `Upgrade` protocol of an agent's tunnel.
pub const TUNNEL_PROTOCOL: &str = "kinglet-tunnel";

/// What every node of a cluster must agree on, so an agent takes it from the server rather
/// than from its own flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: std::net::IpAddr,
    pub cluster_domain: String,
}
