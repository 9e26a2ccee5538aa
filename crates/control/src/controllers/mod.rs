//! Control loops that run inside `kinglet server`, started while this server holds the
//! controller lease.

pub mod cronjob;
mod csr_signing;
pub mod daemonset;
pub mod deployment;
mod endpoints;
mod gc;
mod hpa;
pub use kinglet_core::informers;
#[cfg(test)]
mod informer_tests;
mod job;
mod leader;
mod namespace;
mod node_ipam;
mod nodelifecycle;
pub mod persistentvolume;
mod replicaset;
mod serviceaccounts;
mod servicelb;
mod statefulset;
pub mod util;

use std::sync::Arc;

use kinglet_apiserver::Api;

use crate::identity;

/// The controllers' lease in kube-system (system:kinglet:controller-manager lets the controller
/// manager's user hold it; upstream's role names only `kube-controller-manager`).
const LEASE: &str = "kinglet-controllers";

/// The ServiceAccount k3s's ServiceLB controller acts as here (role system:kinglet:servicelb).
const SERVICELB: &str = "servicelb";

/// Starts leader election; the controllers run while this process leads. Each loop acts as its
/// own identity (`crate::identity`), with only the rights the bootstrap policy grants it; the
/// garbage collector and the namespace controller work on the store directly.
/// `signing_ca` signs approved CertificateSigningRequests (`csr_signing`); `local_storage`
/// is where provisioned local-path volumes live on the nodes (`persistentvolume`).
pub fn start(
    api: Arc<Api>,
    ca_pem: String,
    cluster_cidr: ipnet::Ipv4Net,
    signing_ca: kinglet_pki::CertKey,
    local_storage: std::path::PathBuf,
) {
    let manager = api.local_client_as(identity::controller_manager(), identity::CONTROLLER_MANAGER);
    let holder = format!(
        "{}_{}",
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        uuid::Uuid::new_v4()
    );
    tokio::spawn(async move {
        leader::run(manager.clone(), LEASE, holder, move || {
            let api = api.clone();
            // A client acting as controller `sa` (upstream's ServiceAccount name), and one with
            // an event recorder reporting as `component`.
            let client = |sa: &str| {
                api.local_client_as(identity::controller(sa), identity::CONTROLLER_MANAGER)
            };
            let ctx = |sa: &str, component: &str| util::Context::new(client(sa), component);
            // Shared informers list and watch as the controller manager, as upstream's do.
            let (informers, mut tasks) = informers::Informers::start(&manager);
            tasks.extend([
                tokio::spawn(gc::GarbageCollector::run_forever(api.clone())),
                // ClusterIP and NodePort reservations no Service holds, and Services'
                // missing ones (upstream's repair controllers).
                tokio::spawn(kinglet_apiserver::repair_service_allocations(api.clone())),
                tokio::spawn(serviceaccounts::run(
                    serviceaccounts::Clients {
                        reader: manager.clone(),
                        accounts: client("service-account-controller"),
                        root_ca: client("root-ca-cert-publisher"),
                    },
                    ca_pem.clone(),
                )),
                tokio::spawn(replicaset::run(
                    ctx("replicaset-controller", "replicaset-controller"),
                    informers.clone(),
                )),
                tokio::spawn(deployment::run(
                    ctx("deployment-controller", "deployment-controller"),
                    informers.clone(),
                )),
                tokio::spawn(endpoints::run(
                    endpoints::Clients {
                        reader: manager.clone(),
                        endpoints: client("endpoint-controller"),
                        slices: client("endpointslice-controller"),
                    },
                    informers.clone(),
                )),
                tokio::spawn(daemonset::run(
                    ctx("daemon-set-controller", "daemonset-controller"),
                    informers.clone(),
                )),
                tokio::spawn(statefulset::run(
                    ctx("statefulset-controller", "statefulset-controller"),
                    informers.clone(),
                )),
                tokio::spawn(job::run(
                    ctx("job-controller", "job-controller"),
                    client("ttl-after-finished-controller"),
                    informers.clone(),
                )),
                tokio::spawn(cronjob::run(
                    ctx("cronjob-controller", "cronjob-controller"),
                    informers.clone(),
                )),
                tokio::spawn(hpa::run(ctx(
                    "horizontal-pod-autoscaler",
                    "horizontal-pod-autoscaler",
                ))),
                tokio::spawn(servicelb::run(client(SERVICELB), informers.clone())),
                // Upstream's node IPAM and node lifecycle controllers both act as node-controller.
                tokio::spawn(node_ipam::run(
                    client("node-controller"),
                    informers.clone(),
                    cluster_cidr,
                )),
                tokio::spawn(nodelifecycle::run(
                    ctx("node-controller", "node-controller"),
                    manager.clone(),
                    informers.clone(),
                )),
                tokio::spawn(crate::scheduler::run(
                    util::Context::new(
                        api.local_client_as(identity::scheduler(), identity::SCHEDULER),
                        crate::scheduler::SCHEDULER_NAME,
                    ),
                    informers.clone(),
                )),
                tokio::spawn(persistentvolume::run(
                    ctx("persistent-volume-binder", "persistentvolume-controller"),
                    persistentvolume::Protection {
                        claims: client("pvc-protection-controller"),
                        volumes: client("pv-protection-controller"),
                    },
                    manager.clone(),
                    informers.clone(),
                    local_storage.clone(),
                )),
                tokio::spawn(csr_signing::run(
                    client(csr_signing::SERVICE_ACCOUNT),
                    signing_ca.clone(),
                )),
                tokio::spawn(namespace::run_forever(api)),
            ]);
            tasks
        })
        .await
    });
}
