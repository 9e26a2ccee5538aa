//! Upstream's bootstrap RBAC policy: the ClusterRoles and ClusterRoleBindings every cluster
//! starts with, created at start and reconciled (missing rules and subjects added back) unless
//! an object is annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`.
//!
//! Rules are written one per string: `verbs | apiGroups | resources [| resourceNames]` with `-`
//! for the core group, or `verbs | nonResourceURLs` (a URL starts with `/` or is `*`).

use serde_json::{Value, json};

use super::super::Api;
use super::super::context::Ctx;
use super::super::lifecycle::{commit_update, create_object, get_current};

const RW: &str = "create delete deletecollection patch update";
const RO: &str = "get list watch";

struct Role {
    name: &'static str,
    labels: &'static [&'static str],
    aggregate_from: Option<&'static str>,
    rules: &'static [&'static str],
}

const fn role(name: &'static str, rules: &'static [&'static str]) -> Role {
    Role {
        name,
        labels: &[],
        aggregate_from: None,
        rules,
    }
}

/// `{RO}` and `{RW}` stand for the read and write verb sets in the tables below.
fn expand(rule: &str) -> String {
    rule.replace("{RO}", RO).replace("{RW}", RW)
}

const ROLES: &[Role] = &[
    role("cluster-admin", &["* | * | *", "* | *"]),
    Role {
        name: "admin",
        labels: &[],
        aggregate_from: Some("rbac.authorization.k8s.io/aggregate-to-admin"),
        rules: &[],
    },
    Role {
        name: "edit",
        labels: &["rbac.authorization.k8s.io/aggregate-to-admin"],
        aggregate_from: Some("rbac.authorization.k8s.io/aggregate-to-edit"),
        rules: &[],
    },
    Role {
        name: "view",
        labels: &["rbac.authorization.k8s.io/aggregate-to-edit"],
        aggregate_from: Some("rbac.authorization.k8s.io/aggregate-to-view"),
        rules: &[],
    },
    Role {
        name: "system:aggregate-to-admin",
        labels: &["rbac.authorization.k8s.io/aggregate-to-admin"],
        aggregate_from: None,
        rules: &[
            "create | authorization.k8s.io | localsubjectaccessreviews",
            "{RW} get list watch | rbac.authorization.k8s.io | rolebindings roles",
        ],
    },
    Role {
        name: "system:aggregate-to-edit",
        labels: &["rbac.authorization.k8s.io/aggregate-to-edit"],
        aggregate_from: None,
        rules: &[
            "{RO} | - | pods/attach pods/exec pods/portforward pods/proxy secrets services/proxy",
            "impersonate | - | serviceaccounts",
            "{RW} | - | pods pods/attach pods/exec pods/portforward pods/proxy",
            "create | - | pods/eviction",
            "{RW} | - | configmaps events persistentvolumeclaims replicationcontrollers replicationcontrollers/scale secrets serviceaccounts services services/proxy",
            "create | - | serviceaccounts/token",
            "{RW} | apps | daemonsets deployments deployments/rollback deployments/scale replicasets replicasets/scale statefulsets statefulsets/scale",
            "{RW} | autoscaling | horizontalpodautoscalers",
            "{RW} | batch | cronjobs jobs",
            "{RW} | extensions | daemonsets deployments deployments/rollback deployments/scale ingresses networkpolicies replicasets replicasets/scale replicationcontrollers/scale",
            "{RW} | policy | poddisruptionbudgets",
            "{RW} | networking.k8s.io | ingresses networkpolicies",
            "{RW} get list watch | coordination.k8s.io | leases",
        ],
    },
    Role {
        name: "system:aggregate-to-view",
        labels: &["rbac.authorization.k8s.io/aggregate-to-view"],
        aggregate_from: None,
        rules: &[
            "{RO} | - | configmaps endpoints persistentvolumeclaims persistentvolumeclaims/status pods replicationcontrollers replicationcontrollers/scale serviceaccounts services services/status",
            "{RO} | - | bindings events limitranges namespaces/status pods/log pods/status replicationcontrollers/status resourcequotas resourcequotas/status",
            "{RO} | - | namespaces",
            "{RO} | discovery.k8s.io | endpointslices",
            "{RO} | apps | controllerrevisions daemonsets daemonsets/status deployments deployments/scale deployments/status replicasets replicasets/scale replicasets/status statefulsets statefulsets/scale statefulsets/status",
            "{RO} | autoscaling | horizontalpodautoscalers horizontalpodautoscalers/status",
            "{RO} | batch | cronjobs cronjobs/status jobs jobs/status",
            "{RO} | extensions | daemonsets daemonsets/status deployments deployments/scale deployments/status ingresses ingresses/status networkpolicies replicasets replicasets/scale replicasets/status replicationcontrollers/scale",
            "{RO} | policy | poddisruptionbudgets poddisruptionbudgets/status",
            "{RO} | networking.k8s.io | ingresses ingresses/status networkpolicies",
        ],
    },
    role(
        "system:auth-delegator",
        &[
            "create | authentication.k8s.io | tokenreviews",
            "create | authorization.k8s.io | subjectaccessreviews",
        ],
    ),
    role(
        "system:basic-user",
        &[
            "create | authorization.k8s.io | selfsubjectaccessreviews selfsubjectrulesreviews",
            "create | authentication.k8s.io | selfsubjectreviews",
        ],
    ),
    role(
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        &["create | certificates.k8s.io | certificatesigningrequests/nodeclient"],
    ),
    role(
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        &["create | certificates.k8s.io | certificatesigningrequests/selfnodeclient"],
    ),
    role(
        "system:certificates.k8s.io:kube-apiserver-client-approver",
        &["approve | certificates.k8s.io | signers | kubernetes.io/kube-apiserver-client"],
    ),
    role(
        "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
        &["approve | certificates.k8s.io | signers | kubernetes.io/kube-apiserver-client-kubelet"],
    ),
    role(
        "system:certificates.k8s.io:kubelet-serving-approver",
        &["approve | certificates.k8s.io | signers | kubernetes.io/kubelet-serving"],
    ),
    role(
        "system:certificates.k8s.io:legacy-unknown-approver",
        &["approve | certificates.k8s.io | signers | kubernetes.io/legacy-unknown"],
    ),
    role(
        "system:discovery",
        &[
            "get | /api /api/* /apis /apis/* /healthz /livez /openapi /openapi/* /readyz /version /version/",
        ],
    ),
    role(
        "system:heapster",
        &[
            "{RO} | - | events namespaces nodes pods",
            "{RO} | extensions | deployments",
        ],
    ),
    role("system:kube-aggregator", &["{RO} | - | endpoints services"]),
    role(
        "system:kube-controller-manager",
        &[
            "create patch update | - events.k8s.io | events",
            "create | coordination.k8s.io | leases",
            "get update | coordination.k8s.io | leases | kube-controller-manager",
            "create | - | secrets serviceaccounts",
            "delete | - | secrets",
            "get | - | configmaps namespaces secrets serviceaccounts",
            "update | - | secrets serviceaccounts",
            "create | authentication.k8s.io | tokenreviews",
            "create | authorization.k8s.io | subjectaccessreviews",
            "list watch | * | *",
            "create | - | serviceaccounts/token",
        ],
    ),
    role("system:kube-dns", &["list watch | - | endpoints services"]),
    role(
        "system:kube-scheduler",
        &[
            "create patch update | - events.k8s.io | events",
            "create | coordination.k8s.io | leases",
            "get update | coordination.k8s.io | leases | kube-scheduler",
            "{RO} | - | nodes",
            "delete get list watch | - | pods",
            "create | - | bindings pods/binding",
            "patch update | - | pods/status",
            "{RO} | - | replicationcontrollers services",
            "{RO} | apps extensions | replicasets",
            "{RO} | apps | statefulsets",
            "{RO} | policy | poddisruptionbudgets",
            "{RO} | - | persistentvolumeclaims persistentvolumes",
            "create | authentication.k8s.io | tokenreviews",
            "create | authorization.k8s.io | subjectaccessreviews",
            "{RO} | storage.k8s.io | csinodes",
            "{RO} | - | namespaces",
            "{RO} | storage.k8s.io | csidrivers",
            "{RO} | storage.k8s.io | csistoragecapacities",
        ],
    ),
    role(
        "system:kubelet-api-admin",
        &[
            "{RO} | - | nodes",
            "proxy | - | nodes",
            "* | - | nodes/log nodes/metrics nodes/proxy nodes/stats",
        ],
    ),
    role(
        "system:monitoring",
        &["get | /healthz /healthz/* /livez /livez/* /metrics /metrics/slis /readyz /readyz/*"],
    ),
    role("system:node", super::node::NODE_RULES),
    role(
        "system:node-bootstrapper",
        &["create get list watch | certificates.k8s.io | certificatesigningrequests"],
    ),
    role(
        "system:node-problem-detector",
        &[
            "get | - | nodes",
            "patch | - | nodes/status",
            "create patch update | - events.k8s.io | events",
        ],
    ),
    role(
        "system:node-proxier",
        &[
            "list watch | - | endpoints services",
            "{RO} | - | nodes",
            "create patch update | - events.k8s.io | events",
            "list watch | discovery.k8s.io | endpointslices",
        ],
    ),
    role(
        "system:persistent-volume-provisioner",
        &[
            "create delete get list watch | - | persistentvolumes",
            "get list update watch | - | persistentvolumeclaims",
            "{RO} | storage.k8s.io | storageclasses",
            "watch | - | events",
            "create patch update | - events.k8s.io | events",
        ],
    ),
    role(
        "system:public-info-viewer",
        &["get | /healthz /livez /readyz /version /version/"],
    ),
    role(
        "system:service-account-issuer-discovery",
        &["get | /.well-known/openid-configuration /openid/v1/jwks"],
    ),
    role(
        "system:volume-scheduler",
        &[
            "get list patch update watch | - | persistentvolumes",
            "{RO} | storage.k8s.io | storageclasses",
            "get list patch update watch | - | persistentvolumeclaims",
        ],
    ),
    // kinglet's own: what a node needs beyond `system:node` (k3s binds its agents a role of
    // the same purpose): its event recorder writes events.k8s.io Events, and its service
    // proxy, cluster DNS and network policies watch these.
    role(
        "system:kinglet:node",
        &[
            "create patch update | events.k8s.io | events",
            "list watch | discovery.k8s.io | endpointslices",
            "list watch | - | namespaces endpoints",
            "list watch | networking.k8s.io | networkpolicies",
        ],
    ),
    // Upstream's controller roles (controller_policy.go), one per controller kinglet runs; each
    // controller acts as the ServiceAccount kube-system/<name> bound to system:controller:<name>.
    role(
        "system:controller:certificate-controller",
        &[
            "delete get list watch | certificates.k8s.io | certificatesigningrequests",
            "update | certificates.k8s.io | certificatesigningrequests/approval certificatesigningrequests/status",
            "approve | certificates.k8s.io | signers | kubernetes.io/kube-apiserver-client-kubelet",
            "sign | certificates.k8s.io | signers | kubernetes.io/legacy-unknown kubernetes.io/kube-apiserver-client kubernetes.io/kube-apiserver-client-kubelet kubernetes.io/kubelet-serving",
            "create | authorization.k8s.io | subjectaccessreviews",
            EVENTS,
        ],
    ),
    role(
        "system:controller:cronjob-controller",
        &[
            "get list update watch | batch | cronjobs",
            "create delete get list patch update watch | batch | jobs",
            "update | batch | cronjobs/status",
            "update | batch | cronjobs/finalizers",
            "delete list watch | - | pods",
            EVENTS,
        ],
    ),
    role(
        "system:controller:daemon-set-controller",
        &[
            "{RO} | apps extensions | daemonsets",
            "update | apps extensions | daemonsets/status",
            "update | apps extensions | daemonsets/finalizers",
            "list watch | - | nodes",
            "create delete list patch watch | - | pods",
            "create | - | pods/binding",
            "create delete get list patch update watch | apps | controllerrevisions",
            EVENTS,
        ],
    ),
    role(
        "system:controller:deployment-controller",
        &[
            "get list update watch | apps extensions | deployments",
            "update | apps extensions | deployments/status",
            "update | apps extensions | deployments/finalizers",
            "create delete get list patch update watch | apps extensions | replicasets",
            "get list update watch | - | pods",
            EVENTS,
        ],
    ),
    role(
        "system:controller:endpoint-controller",
        &[
            "{RO} | - | pods services",
            "create delete get list update watch | - | endpoints",
            "create | - | endpoints/restricted",
            EVENTS,
        ],
    ),
    role(
        "system:controller:endpointslice-controller",
        &[
            "{RO} | - | nodes pods services",
            "update | - | services/finalizers",
            "create delete get list update watch | discovery.k8s.io | endpointslices",
            EVENTS,
        ],
    ),
    role(
        "system:controller:generic-garbage-collector",
        &["delete get list patch update watch | * | *", EVENTS],
    ),
    role(
        "system:controller:horizontal-pod-autoscaler",
        &[
            "{RO} | autoscaling | horizontalpodautoscalers",
            "update | autoscaling | horizontalpodautoscalers/status",
            "get update | * | */scale",
            "list watch | - | pods",
            "list watch | metrics.k8s.io | pods",
            "{RO} | custom.metrics.k8s.io | *",
            "{RO} | external.metrics.k8s.io | *",
            EVENTS,
        ],
    ),
    role(
        "system:controller:job-controller",
        &[
            "get list patch update watch | batch | jobs",
            "update | batch | jobs/status",
            "update | batch | jobs/finalizers",
            "create delete list patch watch | - | pods",
            EVENTS,
        ],
    ),
    role(
        "system:controller:namespace-controller",
        &[
            "delete get list watch | - | namespaces",
            "update | - | namespaces/finalize namespaces/status",
            "delete deletecollection get list watch | * | *",
        ],
    ),
    role(
        "system:controller:node-controller",
        &[
            "delete get list patch update watch | - | nodes",
            "patch update | - | nodes/status",
            "patch update | - | pods/status",
            "delete get list watch | - | pods",
            EVENTS,
        ],
    ),
    role(
        "system:controller:persistent-volume-binder",
        &[
            "create delete get list update watch | - | persistentvolumes",
            "update | - | persistentvolumes/status",
            "get list update watch | - | persistentvolumeclaims",
            "update | - | persistentvolumeclaims/status",
            "create delete get list watch | - | pods",
            "{RO} | storage.k8s.io | storageclasses",
            "create delete get | - | endpoints services",
            "get | - | secrets",
            "get list | - | nodes",
            "watch | - | events",
            EVENTS,
        ],
    ),
    role(
        "system:controller:pv-protection-controller",
        &["get list update watch | - | persistentvolumes", EVENTS],
    ),
    role(
        "system:controller:pvc-protection-controller",
        &[
            "get list update watch | - | persistentvolumeclaims",
            "get list watch | - | pods",
            EVENTS,
        ],
    ),
    role(
        "system:controller:replicaset-controller",
        &[
            "get list update watch | apps extensions | replicasets",
            "update | apps extensions | replicasets/status",
            "update | apps extensions | replicasets/finalizers",
            "create delete list patch watch | - | pods",
            EVENTS,
        ],
    ),
    role(
        "system:controller:root-ca-cert-publisher",
        &["create update | - | configmaps", EVENTS],
    ),
    role(
        "system:controller:service-account-controller",
        &["create | - | serviceaccounts", EVENTS],
    ),
    role(
        "system:controller:statefulset-controller",
        &[
            "list watch | - | pods",
            "{RO} | apps | statefulsets",
            "update | apps | statefulsets/status",
            "update | apps | statefulsets/finalizers",
            "create delete get patch update | - | pods",
            "create delete get list patch update watch | apps | controllerrevisions",
            "create get list watch | - | persistentvolumeclaims",
            "delete update | - | persistentvolumeclaims",
            "update | - | pods/finalizers",
            EVENTS,
        ],
    ),
    role(
        "system:controller:ttl-after-finished-controller",
        &["delete get list watch | batch | jobs", EVENTS],
    ),
    // kinglet's own, next to upstream's roles of the same subjects. The controller manager's
    // user holds kinglet's controller lease (upstream's role names only its own lease).
    role(
        "system:kinglet:controller-manager",
        &["get update | coordination.k8s.io | leases | kinglet-controllers"],
    ),
    // kinglet's controllers write status with a merge patch (no read-modify-write conflicts)
    // where upstream's update it; the deployment controller patches its revision annotation
    // and the HPA controller the target's scale likewise.
    role(
        "system:kinglet:controller:cronjob-controller",
        &["patch | batch | cronjobs/status"],
    ),
    role(
        "system:kinglet:controller:daemon-set-controller",
        &["patch | apps extensions | daemonsets/status"],
    ),
    role(
        "system:kinglet:controller:deployment-controller",
        &["patch | apps extensions | deployments deployments/status"],
    ),
    role(
        "system:kinglet:controller:horizontal-pod-autoscaler",
        &[
            "patch | autoscaling | horizontalpodautoscalers/status",
            "patch | * | */scale",
        ],
    ),
    role(
        "system:kinglet:controller:job-controller",
        &["patch | batch | jobs/status"],
    ),
    role(
        "system:kinglet:controller:replicaset-controller",
        &["patch | apps extensions | replicasets/status"],
    ),
    role(
        "system:kinglet:controller:statefulset-controller",
        &["patch | apps | statefulsets/status"],
    ),
    // k3s's ServiceLB controller: it reads Services and Nodes from the controller manager's
    // shared informers and writes only the load balancer status.
    role("system:kinglet:servicelb", &["patch | - | services/status"]),
];

/// The events rule every upstream controller role carries.
const EVENTS: &str = "create patch update | - events.k8s.io | events";

/// `(binding name, role, subjects as "Kind:name" or "ServiceAccount:ns/name")`.
const BINDINGS: &[(&str, &str, &[&str])] = &[
    ("cluster-admin", "cluster-admin", &["Group:system:masters"]),
    (
        "system:basic-user",
        "system:basic-user",
        &["Group:system:authenticated"],
    ),
    (
        "system:discovery",
        "system:discovery",
        &["Group:system:authenticated"],
    ),
    (
        "system:kube-controller-manager",
        "system:kube-controller-manager",
        &["User:system:kube-controller-manager"],
    ),
    (
        "system:kube-dns",
        "system:kube-dns",
        &["ServiceAccount:kube-system/kube-dns"],
    ),
    (
        "system:kube-scheduler",
        "system:kube-scheduler",
        &["User:system:kube-scheduler"],
    ),
    (
        "system:monitoring",
        "system:monitoring",
        &["Group:system:monitoring"],
    ),
    // No subjects, as upstream: nodes get these rules through the node authorizer.
    ("system:node", "system:node", &[]),
    (
        "system:node-proxier",
        "system:node-proxier",
        &["User:system:kube-proxy"],
    ),
    (
        "system:public-info-viewer",
        "system:public-info-viewer",
        &["Group:system:authenticated", "Group:system:unauthenticated"],
    ),
    (
        "system:service-account-issuer-discovery",
        "system:service-account-issuer-discovery",
        &["Group:system:serviceaccounts"],
    ),
    (
        "system:volume-scheduler",
        "system:volume-scheduler",
        &["User:system:kube-scheduler"],
    ),
    // The API server's client certificate toward kubelets (k3s binds it the same way).
    (
        "system:kinglet:kube-apiserver-kubelet-client",
        "system:kubelet-api-admin",
        &["User:kube-apiserver-kubelet-client"],
    ),
    (
        "system:kinglet:node",
        "system:kinglet:node",
        &["Group:system:nodes"],
    ),
    // Upstream's controller bindings: each controller's ServiceAccount to its role.
    (
        "system:controller:certificate-controller",
        "system:controller:certificate-controller",
        &["ServiceAccount:kube-system/certificate-controller"],
    ),
    (
        "system:controller:cronjob-controller",
        "system:controller:cronjob-controller",
        &["ServiceAccount:kube-system/cronjob-controller"],
    ),
    (
        "system:controller:daemon-set-controller",
        "system:controller:daemon-set-controller",
        &["ServiceAccount:kube-system/daemon-set-controller"],
    ),
    (
        "system:controller:deployment-controller",
        "system:controller:deployment-controller",
        &["ServiceAccount:kube-system/deployment-controller"],
    ),
    (
        "system:controller:endpoint-controller",
        "system:controller:endpoint-controller",
        &["ServiceAccount:kube-system/endpoint-controller"],
    ),
    (
        "system:controller:endpointslice-controller",
        "system:controller:endpointslice-controller",
        &["ServiceAccount:kube-system/endpointslice-controller"],
    ),
    (
        "system:controller:generic-garbage-collector",
        "system:controller:generic-garbage-collector",
        &["ServiceAccount:kube-system/generic-garbage-collector"],
    ),
    (
        "system:controller:horizontal-pod-autoscaler",
        "system:controller:horizontal-pod-autoscaler",
        &["ServiceAccount:kube-system/horizontal-pod-autoscaler"],
    ),
    (
        "system:controller:job-controller",
        "system:controller:job-controller",
        &["ServiceAccount:kube-system/job-controller"],
    ),
    (
        "system:controller:namespace-controller",
        "system:controller:namespace-controller",
        &["ServiceAccount:kube-system/namespace-controller"],
    ),
    (
        "system:controller:node-controller",
        "system:controller:node-controller",
        &["ServiceAccount:kube-system/node-controller"],
    ),
    (
        "system:controller:persistent-volume-binder",
        "system:controller:persistent-volume-binder",
        &["ServiceAccount:kube-system/persistent-volume-binder"],
    ),
    (
        "system:controller:pv-protection-controller",
        "system:controller:pv-protection-controller",
        &["ServiceAccount:kube-system/pv-protection-controller"],
    ),
    (
        "system:controller:pvc-protection-controller",
        "system:controller:pvc-protection-controller",
        &["ServiceAccount:kube-system/pvc-protection-controller"],
    ),
    (
        "system:controller:replicaset-controller",
        "system:controller:replicaset-controller",
        &["ServiceAccount:kube-system/replicaset-controller"],
    ),
    (
        "system:controller:root-ca-cert-publisher",
        "system:controller:root-ca-cert-publisher",
        &["ServiceAccount:kube-system/root-ca-cert-publisher"],
    ),
    (
        "system:controller:service-account-controller",
        "system:controller:service-account-controller",
        &["ServiceAccount:kube-system/service-account-controller"],
    ),
    (
        "system:controller:statefulset-controller",
        "system:controller:statefulset-controller",
        &["ServiceAccount:kube-system/statefulset-controller"],
    ),
    (
        "system:controller:ttl-after-finished-controller",
        "system:controller:ttl-after-finished-controller",
        &["ServiceAccount:kube-system/ttl-after-finished-controller"],
    ),
    (
        "system:kinglet:controller-manager",
        "system:kinglet:controller-manager",
        &["User:system:kube-controller-manager"],
    ),
    (
        "system:kinglet:controller:cronjob-controller",
        "system:kinglet:controller:cronjob-controller",
        &["ServiceAccount:kube-system/cronjob-controller"],
    ),
    (
        "system:kinglet:controller:daemon-set-controller",
        "system:kinglet:controller:daemon-set-controller",
        &["ServiceAccount:kube-system/daemon-set-controller"],
    ),
    (
        "system:kinglet:controller:deployment-controller",
        "system:kinglet:controller:deployment-controller",
        &["ServiceAccount:kube-system/deployment-controller"],
    ),
    (
        "system:kinglet:controller:horizontal-pod-autoscaler",
        "system:kinglet:controller:horizontal-pod-autoscaler",
        &["ServiceAccount:kube-system/horizontal-pod-autoscaler"],
    ),
    (
        "system:kinglet:controller:job-controller",
        "system:kinglet:controller:job-controller",
        &["ServiceAccount:kube-system/job-controller"],
    ),
    (
        "system:kinglet:controller:replicaset-controller",
        "system:kinglet:controller:replicaset-controller",
        &["ServiceAccount:kube-system/replicaset-controller"],
    ),
    (
        "system:kinglet:controller:statefulset-controller",
        "system:kinglet:controller:statefulset-controller",
        &["ServiceAccount:kube-system/statefulset-controller"],
    ),
    (
        "system:kinglet:servicelb",
        "system:kinglet:servicelb",
        &["ServiceAccount:kube-system/servicelb"],
    ),
];

/// A rule in the table notation as a PolicyRule.
pub fn rule(text: &str) -> Value {
    let text = expand(text);
    let fields: Vec<Vec<&str>> = text
        .split('|')
        .map(|f| f.split_whitespace().collect())
        .collect();
    let verbs = &fields[0];
    let is_url = |f: &Vec<&str>| f.iter().all(|u| u.starts_with('/') || *u == "*");
    if fields.len() == 2 && is_url(&fields[1]) {
        return json!({"verbs": verbs, "nonResourceURLs": fields[1]});
    }
    let groups: Vec<&str> = fields[1]
        .iter()
        .map(|g| if *g == "-" { "" } else { g })
        .collect();
    let mut r = json!({"verbs": verbs, "apiGroups": groups, "resources": fields.get(2).cloned().unwrap_or_default()});
    if let Some(names) = fields.get(3) {
        r["resourceNames"] = json!(names);
    }
    r
}

fn meta(name: &str, labels: &[&str]) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for k in labels {
        l[*k] = json!("true");
    }
    json!({"name": name, "labels": l,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn cluster_role(r: &Role) -> Value {
    let mut v = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(r.name, r.labels),
        "rules": r.rules.iter().map(|t| rule(t)).collect::<Vec<_>>()});
    if let Some(label) = r.aggregate_from {
        v["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
    }
    v
}

fn subject(text: &str) -> Value {
    let (kind, name) = text.split_once(':').unwrap_or(("User", text));
    match (kind, name.split_once('/')) {
        ("ServiceAccount", Some((ns, n))) => {
            json!({"kind": kind, "name": n, "namespace": ns})
        }
        _ => json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name}),
    }
}

fn cluster_role_binding(name: &str, role: &str, subjects: &[&str]) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects.iter().map(|s| subject(s)).collect::<Vec<_>>()})
}

/// Adds to `list` (at `field`) what `wanted` has and it lacks; true when something was added.
fn union_into(current: &mut Value, field: &str, wanted: &Value) -> bool {
    let mut changed = false;
    let want = wanted.get(field).and_then(Value::as_array).cloned();
    if !current.get(field).is_some_and(Value::is_array) {
        current[field] = json!([]);
    }
    let list = current[field].as_array_mut().expect("made an array above");
    for w in want.into_iter().flatten() {
        if !list.contains(&w) {
            list.push(w);
            changed = true;
        }
    }
    changed
}

/// Creates the bootstrap roles and bindings, and adds back what was removed from them
/// (unless autoupdate is off for that object).
pub async fn reconcile(api: &Api) -> anyhow::Result<()> {
    let objects = ROLES
        .iter()
        .map(|r| ("clusterroles", cluster_role(r), "rules"))
        .chain(BINDINGS.iter().map(|(n, r, s)| {
            (
                "clusterrolebindings",
                cluster_role_binding(n, r, s),
                "subjects",
            )
        }));
    for (resource, wanted, field) in objects {
        let res = api
            .registry
            .find("rbac.authorization.k8s.io", "v1", resource)
            .ok_or_else(|| anyhow::anyhow!("{resource} not registered"))?;
        let ctx = Ctx::internal("rbac.authorization.k8s.io", "v1", resource, None);
        let name = wanted["metadata"]["name"].as_str().unwrap_or_default();
        match get_current(api, &res, &ctx, name).await {
            Ok((rec, old)) => {
                let autoupdate = old
                    .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
                    .and_then(Value::as_str);
                if autoupdate == Some("false") {
                    continue;
                }
                let mut new = old.clone();
                // Aggregated roles get their rules from the aggregation, not from here.
                let mut changed =
                    wanted.get("aggregationRule").is_none() && union_into(&mut new, field, &wanted);
                if resource == "clusterrolebindings" && new["roleRef"] != wanted["roleRef"] {
                    // A binding's roleRef cannot change; leave one the user re-pointed.
                    changed = false;
                }
                // A conflict (409) is another server sharing the datastore reconciling the
                // same object at its start; its write or the next start's brings it in line.
                if changed {
                    match commit_update(api, &res, &ctx, rec.rev, &old, new, None).await {
                        Err(e) if e.code != 409 => {
                            anyhow::bail!("updating {resource}/{name}: {e}")
                        }
                        _ => {}
                    }
                }
            }
            Err(e) if e.code == 404 => match create_object(api, &res, &ctx, wanted.clone()).await {
                Err(e) if e.code != 409 => anyhow::bail!("creating {resource}/{name}: {e}"),
                _ => {}
            },
            Err(e) => anyhow::bail!("{e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_notation_reads_as_policy_rules() {
        assert_eq!(
            rule("{RO} | - apps | pods deployments/scale"),
            json!({"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"], "resources": ["pods", "deployments/scale"]})
        );
        assert_eq!(
            rule("approve | certificates.k8s.io | signers | kubernetes.io/legacy-unknown"),
            json!({"verbs": ["approve"], "apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": ["kubernetes.io/legacy-unknown"]})
        );
        assert_eq!(
            rule("* | *"),
            json!({"verbs": ["*"], "nonResourceURLs": ["*"]})
        );
        assert_eq!(rule("* | * | *")["apiGroups"], json!(["*"]));
        assert_eq!(
            rule("get | /api /api/*"),
            json!({"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]})
        );
    }

    #[test]
    fn every_controller_role_is_bound_to_its_service_account() {
        let controllers: Vec<&str> = ROLES
            .iter()
            .filter_map(|r| r.name.strip_prefix("system:controller:"))
            .collect();
        assert!(controllers.contains(&"replicaset-controller"));
        for c in controllers {
            let name = format!("system:controller:{c}");
            let binding = BINDINGS.iter().find(|(n, _, _)| *n == name);
            let Some((_, role, subjects)) = binding else {
                panic!("no binding {name}");
            };
            assert_eq!(*role, name);
            assert_eq!(
                subjects.iter().map(|s| subject(s)).collect::<Vec<_>>(),
                [json!({"kind": "ServiceAccount", "name": c, "namespace": "kube-system"})],
                "{name}"
            );
        }
    }

    #[test]
    fn role_and_binding_names_are_unique() {
        let mut roles: Vec<&str> = ROLES.iter().map(|r| r.name).collect();
        let mut bindings: Vec<&str> = BINDINGS.iter().map(|b| b.0).collect();
        for names in [&mut roles, &mut bindings] {
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "a name is listed twice");
        }
    }

    #[test]
    fn every_binding_names_a_bootstrap_role() {
        for (name, role, subjects) in BINDINGS {
            assert!(ROLES.iter().any(|r| r.name == *role), "{name} -> {role}");
            for s in *subjects {
                assert!(subject(s)["name"].as_str().is_some_and(|n| !n.is_empty()));
            }
        }
    }
}
