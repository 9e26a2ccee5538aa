//! Who the control loops are toward the API server. As upstream's kube-controller-manager with
//! `--use-service-account-credentials` and kube-scheduler, each loop acts under an identity of
//! its own that RBAC's bootstrap policy grants just what that loop needs; none is in
//! `system:masters`. The ServiceAccount objects are not created: in-process callers never
//! present a token, so the names alone carry the identity.

use kinglet_apiserver::auth::UserInfo;

/// The namespace of the controllers' ServiceAccounts.
pub const NAMESPACE: &str = "kube-system";

/// The program names the control loops introduce themselves with (their User-Agent, and so
/// the field manager of their writes), as upstream's binaries.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";

/// The request context of the loops that write through the API server's lifecycle directly
/// (the garbage collector, the namespace controller): the server's rights, with the controller
/// manager's name on what they write.
pub fn store_writer(
    group: &str,
    version: &str,
    resource: &str,
    ns: Option<&str>,
) -> kinglet_apiserver::context::Ctx {
    let mut ctx = kinglet_apiserver::context::Ctx::internal(group, version, resource, ns);
    ctx.user_agent = kinglet_apiserver::user_agent(CONTROLLER_MANAGER);
    ctx
}

/// The controller manager's own user: leader election and the shared informers (its bootstrap
/// role may list and watch everything), and what upstream does without a per-controller client.
pub fn controller_manager() -> UserInfo {
    user("system:kube-controller-manager")
}

/// The scheduler's user, bound to `system:kube-scheduler` and `system:volume-scheduler`.
pub fn scheduler() -> UserInfo {
    user("system:kube-scheduler")
}

/// Controller `name` (upstream's ServiceAccount name, e.g. `replicaset-controller`), bound to
/// `system:controller:<name>`.
pub fn controller(name: &str) -> UserInfo {
    service_account(NAMESPACE, name)
}

/// A ServiceAccount's user and groups, as its token would authenticate.
pub fn service_account(namespace: &str, name: &str) -> UserInfo {
    UserInfo {
        name: format!("system:serviceaccount:{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
        ..Default::default()
    }
}

/// A user as a client certificate with no organisation names it.
fn user(name: &str) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: vec!["system:authenticated".into()],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{Node, Pod, Secret};
    use kinglet_apiserver::authz::{Attributes, Decision};
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use std::sync::Arc;

    /// `who | verb | group | resource[/subresource] | namespace [name]`, `-` the core group or
    /// no namespace; `who` is a controller's ServiceAccount name, `manager` or `scheduler`.
    fn attributes(line: &str) -> Attributes {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let user = match f[0] {
            "manager" => controller_manager(),
            "scheduler" => scheduler(),
            sa => controller(sa),
        };
        let (resource, sub) = f[3].split_once('/').unwrap_or((f[3], ""));
        let mut place = f[4].split_whitespace();
        let ns = place.next().filter(|n| *n != "-").unwrap_or_default();
        Attributes {
            user: Arc::new(user),
            verb: f[1].into(),
            resource_request: true,
            namespace: ns.into(),
            group: if f[2] == "-" { "" } else { f[2] }.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: place.next().unwrap_or_default().into(),
            path: String::new(),
        }
    }

    /// What each loop does through its own client (controllers/*.rs, scheduler), and every
    /// loop's events (kube-rs records events.k8s.io Events: create, then patch).
    const ALLOWED: &[&str] = &[
        "manager | list | - | pods | -",
        "manager | watch | apps | replicasets | -",
        "manager | watch | discovery.k8s.io | endpointslices | -",
        "manager | list | coordination.k8s.io | leases | kube-node-lease",
        "manager | get | - | serviceaccounts | ns1 default",
        "manager | get | - | configmaps | ns1 kube-root-ca.crt",
        "manager | create | coordination.k8s.io | leases | kube-system",
        "manager | get | coordination.k8s.io | leases | kube-system kinglet-controllers",
        "manager | update | coordination.k8s.io | leases | kube-system kinglet-controllers",
        "scheduler | create | - | pods/binding | ns1 p",
        "scheduler | patch | - | pods/status | ns1 p",
        "scheduler | delete | - | pods | ns1 p",
        "scheduler | patch | events.k8s.io | events | ns1 e",
        "replicaset-controller | create | - | pods | ns1",
        "replicaset-controller | delete | - | pods | ns1 p",
        "replicaset-controller | patch | - | pods | ns1 p",
        "replicaset-controller | patch | apps | replicasets/status | ns1 rs",
        "replicaset-controller | create | events.k8s.io | events | ns1",
        "deployment-controller | watch | apps | deployments | -",
        "deployment-controller | create | apps | replicasets | ns1",
        "deployment-controller | patch | apps | replicasets | ns1 rs",
        "deployment-controller | delete | apps | replicasets | ns1 rs",
        "deployment-controller | patch | apps | deployments | ns1 d",
        "deployment-controller | patch | apps | deployments/status | ns1 d",
        "daemon-set-controller | list | apps | daemonsets | -",
        "daemon-set-controller | create | - | pods | ns1",
        "daemon-set-controller | delete | - | pods | ns1 p",
        "daemon-set-controller | list | apps | controllerrevisions | ns1",
        "daemon-set-controller | create | apps | controllerrevisions | ns1",
        "daemon-set-controller | patch | apps | daemonsets/status | ns1 ds",
        "statefulset-controller | watch | apps | statefulsets | -",
        "statefulset-controller | get | - | persistentvolumeclaims | ns1 c",
        "statefulset-controller | create | - | persistentvolumeclaims | ns1",
        "statefulset-controller | create | - | pods | ns1",
        "statefulset-controller | get | apps | controllerrevisions | ns1 r",
        "statefulset-controller | patch | apps | statefulsets/status | ns1 s",
        "job-controller | create | - | pods | ns1",
        "job-controller | patch | batch | jobs/status | ns1 j",
        "ttl-after-finished-controller | delete | batch | jobs | ns1 j",
        "cronjob-controller | list | batch | cronjobs | -",
        "cronjob-controller | create | batch | jobs | ns1",
        "cronjob-controller | delete | batch | jobs | ns1 j",
        "cronjob-controller | patch | batch | cronjobs/status | ns1 c",
        "horizontal-pod-autoscaler | watch | autoscaling | horizontalpodautoscalers | -",
        "horizontal-pod-autoscaler | get | apps | deployments/scale | ns1 d",
        "horizontal-pod-autoscaler | patch | apps | deployments/scale | ns1 d",
        "horizontal-pod-autoscaler | list | - | pods | ns1",
        "horizontal-pod-autoscaler | list | metrics.k8s.io | pods | ns1",
        "horizontal-pod-autoscaler | patch | autoscaling | horizontalpodautoscalers/status | ns1 h",
        "endpoint-controller | create | - | endpoints | ns1",
        "endpoint-controller | update | - | endpoints | ns1 s",
        "endpoint-controller | delete | - | endpoints | ns1 s",
        "endpointslice-controller | create | discovery.k8s.io | endpointslices | ns1",
        "endpointslice-controller | update | discovery.k8s.io | endpointslices | ns1 s",
        "endpointslice-controller | delete | discovery.k8s.io | endpointslices | ns1 s",
        "node-controller | list | - | nodes | -",
        "node-controller | patch | - | nodes | - n1",
        "node-controller | patch | - | nodes/status | - n1",
        "node-controller | delete | - | pods | ns1 p",
        "service-account-controller | create | - | serviceaccounts | ns1",
        "root-ca-cert-publisher | create | - | configmaps | ns1",
        "root-ca-cert-publisher | update | - | configmaps | ns1 kube-root-ca.crt",
        "servicelb | patch | - | services/status | ns1 s",
        "persistent-volume-binder | create | - | persistentvolumes | -",
        "persistent-volume-binder | update | - | persistentvolumes | - pv1",
        "persistent-volume-binder | update | - | persistentvolumes/status | - pv1",
        "persistent-volume-binder | delete | - | persistentvolumes | - pv1",
        "persistent-volume-binder | update | - | persistentvolumeclaims | ns1 c",
        "persistent-volume-binder | update | - | persistentvolumeclaims/status | ns1 c",
        "persistent-volume-binder | get | - | persistentvolumeclaims | ns1 c",
        "persistent-volume-binder | create | events.k8s.io | events | ns1",
        "pvc-protection-controller | update | - | persistentvolumeclaims | ns1 c",
        "pvc-protection-controller | list | - | pods | ns1",
        "pv-protection-controller | update | - | persistentvolumes | - pv1",
        "scheduler | get | - | persistentvolumeclaims | ns1 c",
        "scheduler | list | - | persistentvolumes | -",
        "scheduler | get | storage.k8s.io | storageclasses | - local-path",
        "scheduler | patch | - | persistentvolumeclaims | ns1 c",
    ];

    /// Least rights: what none of these loops needs.
    const DENIED: &[&str] = &[
        "replicaset-controller | get | - | secrets | ns1 s",
        "replicaset-controller | delete | - | nodes | - n1",
        "replicaset-controller | create | apps | deployments | ns1",
        "manager | create | - | pods | ns1",
        "manager | update | coordination.k8s.io | leases | kube-system other",
        "manager | delete | - | nodes | - n1",
        "scheduler | list | - | secrets | -",
        "scheduler | patch | - | nodes | - n1",
        "job-controller | delete | batch | jobs | ns1 j",
        "endpoint-controller | create | discovery.k8s.io | endpointslices | ns1",
        "endpointslice-controller | create | - | endpoints | ns1",
        "service-account-controller | create | - | configmaps | ns1",
        "root-ca-cert-publisher | create | - | serviceaccounts | ns1",
        "servicelb | update | - | services | ns1 s",
        "servicelb | list | - | secrets | -",
        "node-controller | create | - | pods | ns1",
        "horizontal-pod-autoscaler | patch | apps | deployments | ns1 d",
        "persistent-volume-binder | delete | - | persistentvolumeclaims | ns1 c",
        "persistent-volume-binder | patch | - | persistentvolumes | - pv1",
        "persistent-volume-binder | update | storage.k8s.io | storageclasses | - local-path",
        "scheduler | delete | - | persistentvolumes | - pv1",
        "pvc-protection-controller | update | - | persistentvolumes | - pv1",
        "pv-protection-controller | update | - | persistentvolumeclaims | ns1 c",
    ];

    #[tokio::test]
    async fn each_loop_may_do_what_it_does_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let api = kinglet_apiserver::test_api(dir.path()).await;
        let mut wrong = Vec::new();
        for (lines, want) in [(ALLOWED, true), (DENIED, false)] {
            for line in lines {
                let allowed = matches!(
                    api.authz.authorize(&api, &attributes(line)).await,
                    Decision::Allow(_)
                );
                if allowed != want {
                    wrong.push(format!("{line}: allowed {allowed}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    fn forbidden<T: std::fmt::Debug>(r: kube::Result<T>) -> bool {
        matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
    }

    #[tokio::test]
    async fn the_replicaset_controller_cannot_read_secrets_or_delete_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let api = kinglet_apiserver::test_api(dir.path()).await;
        let admin = api.local_client();
        let node: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).unwrap();
        Api::<Node>::all(admin.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        let secret: Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
        )
        .unwrap();
        Api::<Secret>::namespaced(admin.clone(), "default")
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "rs"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        Api::<ReplicaSet>::namespaced(admin, "default")
            .create(&PostParams::default(), &rs)
            .await
            .unwrap();

        let rsc = api.local_client_as(controller("replicaset-controller"), CONTROLLER_MANAGER);
        let secrets = Api::<Secret>::namespaced(rsc.clone(), "default");
        assert!(forbidden(secrets.get("s").await));
        assert!(forbidden(secrets.list(&ListParams::default()).await));
        let nodes = Api::<Node>::all(rsc.clone());
        assert!(forbidden(
            nodes.delete("n1", &DeleteParams::default()).await
        ));
        // What it is for still works: pods from the template, and its status.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "rs-1", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(rsc.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        let status = serde_json::json!({"status": {"replicas": 1}});
        Api::<ReplicaSet>::namespaced(rsc, "default")
            .patch_status("rs", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        assert!(
            Api::<Node>::all(api.local_client())
                .get_opt("n1")
                .await
                .unwrap()
                .is_some()
        );
    }
}
