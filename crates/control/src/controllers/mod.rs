//! Control loops that run inside `kinglet server`, started while this server holds the
//! controller lease.

pub mod cronjob;
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
mod replicaset;
mod serviceaccounts;
mod servicelb;
mod statefulset;
pub mod util;

use std::sync::Arc;

use kinglet_apiserver::Api;

/// Starts leader election; the controllers run while this process leads.
pub fn start(api: Arc<Api>, ca_pem: String, cluster_cidr: ipnet::Ipv4Net) {
    let client = api.local_client();
    let identity = format!(
        "{}_{}",
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        uuid::Uuid::new_v4()
    );
    tokio::spawn(async move {
        leader::run(client.clone(), "kinglet-controllers", identity, move || {
            let api = api.clone();
            let (informers, mut tasks) = informers::Informers::start(&client);
            tasks.extend([
                tokio::spawn(gc::GarbageCollector::run_forever(api.clone())),
                tokio::spawn(namespace::run_forever(api)),
                tokio::spawn(serviceaccounts::run(client.clone(), ca_pem.clone())),
                tokio::spawn(replicaset::run(
                    util::Context::new(client.clone(), "replicaset-controller"),
                    informers.clone(),
                )),
                tokio::spawn(deployment::run(
                    util::Context::new(client.clone(), "deployment-controller"),
                    informers.clone(),
                )),
                tokio::spawn(endpoints::run(client.clone(), informers.clone())),
                tokio::spawn(daemonset::run(
                    util::Context::new(client.clone(), "daemonset-controller"),
                    informers.clone(),
                )),
                tokio::spawn(statefulset::run(
                    util::Context::new(client.clone(), "statefulset-controller"),
                    informers.clone(),
                )),
                tokio::spawn(job::run(
                    util::Context::new(client.clone(), "job-controller"),
                    informers.clone(),
                )),
                tokio::spawn(cronjob::run(
                    util::Context::new(client.clone(), "cronjob-controller"),
                    informers.clone(),
                )),
                tokio::spawn(hpa::run(util::Context::new(
                    client.clone(),
                    "horizontal-pod-autoscaler",
                ))),
                tokio::spawn(servicelb::run(client.clone(), informers.clone())),
                tokio::spawn(node_ipam::run(
                    client.clone(),
                    informers.clone(),
                    cluster_cidr,
                )),
                tokio::spawn(nodelifecycle::run(
                    util::Context::new(client.clone(), "node-controller"),
                    informers.clone(),
                )),
                tokio::spawn(crate::scheduler::run(
                    util::Context::new(client.clone(), crate::scheduler::SCHEDULER_NAME),
                    informers.clone(),
                )),
            ]);
            tasks
        })
        .await
    });
}
