//! Leader election through a coordination.k8s.io Lease, so that two servers on one datastore
//! never both run the control loops.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;

const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Whether `identity` holds (or has just taken) the lease.
async fn try_lead(leases: &Api<Lease>, name: &str, identity: &str) -> kube::Result<bool> {
    let now = Timestamp::now();
    let fresh = |transitions: i32, acquire: Option<MicroTime>| {
        serde_json::from_value::<Lease>(serde_json::json!({
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": LEASE_SECONDS,
                "acquireTime": acquire.map(|a| a.0.to_string()).unwrap_or_else(|| now.to_string()),
                "renewTime": now.to_string(),
                "leaseTransitions": transitions,
            }
        }))
        .expect("lease")
    };
    let current = match leases.get_opt(name).await? {
        None => {
            return match leases.create(&PostParams::default(), &fresh(0, None)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec
        .renew_time
        .as_ref()
        .map(|t| {
            t.0.as_second() + i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS))
                < now.as_second()
        })
        .unwrap_or(true);
    if holder != identity && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != identity);
    let acquire = if holder == identity {
        spec.acquire_time.clone()
    } else {
        None
    };
    let mut next = fresh(transitions, acquire);
    next.metadata.resource_version = current.metadata.resource_version.clone();
    match leases.replace(name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `start`'s tasks while this process holds the lease; stops them if it loses it.
pub async fn run(
    client: kube::Client,
    name: &str,
    identity: String,
    start: impl Fn() -> Vec<JoinHandle<()>>,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let mut running: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let leading = match try_lead(&leases, name, &identity).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("leader election: {e}");
                false
            }
        };
        if leading && running.is_empty() {
            tracing::info!(%identity, "became leader; starting controllers");
            running = start();
        } else if !leading && !running.is_empty() {
            tracing::warn!(%identity, "lost leadership; stopping controllers");
            running.drain(..).for_each(|h| h.abort());
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let api = kinglet_apiserver::test_api(dir.path()).await;
        let leases: Api<Lease> = Api::namespaced(api.local_client(), "kube-system");
        assert!(try_lead(&leases, "ctl", "a").await.unwrap());
        assert!(
            try_lead(&leases, "ctl", "a").await.unwrap(),
            "the holder renews"
        );
        assert!(
            !try_lead(&leases, "ctl", "b").await.unwrap(),
            "a second server must not lead"
        );
        // Let the lease expire: b takes over and a loses it.
        let mut l = leases.get("ctl").await.unwrap();
        l.spec.as_mut().unwrap().renew_time = Some(MicroTime(
            Timestamp::from_second(Timestamp::now().as_second() - 60).unwrap(),
        ));
        leases
            .replace("ctl", &PostParams::default(), &l)
            .await
            .unwrap();
        assert!(try_lead(&leases, "ctl", "b").await.unwrap());
        assert!(!try_lead(&leases, "ctl", "a").await.unwrap());
        let l = leases.get("ctl").await.unwrap();
        assert_eq!(l.spec.as_ref().unwrap().lease_transitions, Some(1));
    }
}
