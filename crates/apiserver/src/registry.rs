//! The resource table: every served resource, built-in or custom, is one `Resource` entry.
//! Discovery, OpenAPI, routing and storage keys are all derived from it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

/// A subresource of a resource (`pods/status`).
#[derive(Clone, Debug, PartialEq)]
pub struct Subresource {
    pub name: String,
    pub kind: String,
    pub group: String,
    pub version: String,
    pub verbs: &'static [&'static str],
}

/// What a custom resource version adds: its schema and printer columns.
#[derive(Clone, Debug, Default)]
pub struct CustomInfo {
    pub schema: Option<Value>,
    pub printer_columns: Vec<Value>,
    pub scale: Option<ScalePaths>,
}

#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;
pub type DecodeCheck = fn(&Value) -> Result<(), String>;

#[derive(Clone)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// The group and plural the objects are stored under (shared across versions).
    pub storage: (String, String),
    /// Resources that only accept `create` (reviews, bindings).
    pub create_only: bool,
    /// Objects computed on request from the nodes' kubelets (metrics.k8s.io): `get` and `list`
    /// only, nothing stored.
    pub computed: bool,
    /// OpenAPI schema of the object, for built-in kinds.
    pub schema: Option<SchemaFn>,
    /// The schema's definition name, for built-in kinds.
    pub schema_name: Option<fn() -> String>,
    /// Decodes the object into its typed form, reporting type errors (built-in kinds).
    pub decode_check: Option<DecodeCheck>,
    /// Set for custom resources.
    pub custom: Option<Arc<CustomInfo>>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
pub const CREATE_ONLY_VERBS: &[&str] = &["create"];
pub const GET_LIST_VERBS: &[&str] = &["get", "list"];
const GET_UPDATE: &[&str] = &["get", "patch", "update"];
const CREATE_VERB: &[&str] = &["create"];
const GET_VERB: &[&str] = &["get"];

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.create_only {
            CREATE_ONLY_VERBS
        } else if self.computed {
            GET_LIST_VERBS
        } else {
            ALL_VERBS
        }
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    /// Storage key prefix of all objects, as upstream lays keys out in etcd: kube-apiserver's
    /// own resources under their plural (`/registry/deployments/`, with its few historical
    /// exceptions such as `/registry/minions/`), the apiextensions and aggregator servers'
    /// resources, custom resources and aggregated APIs under group and plural
    /// (`/registry/apiextensions.k8s.io/customresourcedefinitions/`,
    /// `/registry/example.com/widgets/`). Every prefix ends in `/`, so none is a prefix of
    /// another resource's.
    pub fn prefix(&self) -> String {
        let (group, resource) = (&self.storage.0, &self.storage.1);
        if self.is_custom() || self.computed || !is_kube_apiserver_group(group) {
            return group_prefix(group, resource);
        }
        let path = KUBE_APISERVER_PREFIXES
            .iter()
            .find(|(g, r, _)| g == group && r == resource)
            .map_or(resource.as_str(), |(_, _, path)| path);
        format!("/registry/{path}/")
    }
    /// Storage key prefix of one namespace (or all, with None).
    pub fn ns_prefix(&self, ns: Option<&str>) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }
    pub fn is_custom(&self) -> bool {
        self.custom.is_some()
    }
    /// The OpenAPI definition name of this kind (`io.k8s.api.apps.v1.Deployment`).
    pub fn definition_name(&self) -> String {
        if let Some(name) = self.schema_name {
            return name();
        }
        let mut parts: Vec<&str> = self.group.split('.').collect();
        parts.reverse();
        format!("{}.{}.{}", parts.join("."), self.version, self.kind)
    }
}

/// Storage key prefix of a resource keyed by group and plural, as custom resources are
/// (`/registry/example.com/widgets/`).
pub fn group_prefix(group: &str, plural: &str) -> String {
    format!("/registry/{group}/{plural}/")
}

/// The groups kube-apiserver serves itself; the rest are served (upstream) by the apiextensions
/// server, the aggregator, or aggregated servers, whose keys carry the group.
fn is_kube_apiserver_group(group: &str) -> bool {
    !matches!(
        group,
        "apiextensions.k8s.io" | "apiregistration.k8s.io" | "metrics.k8s.io"
    )
}

/// kube-apiserver's resources whose keys are not their plural
/// (`SpecialDefaultResourcePrefixes` in `pkg/kubeapiserver/default_storage_factory_builder.go`).
const KUBE_APISERVER_PREFIXES: &[(&str, &str, &str)] = &[
    ("", "replicationcontrollers", "controllers"),
    ("", "endpoints", "services/endpoints"),
    ("", "nodes", "minions"),
    ("", "services", "services/specs"),
    ("networking.k8s.io", "ingresses", "ingress"),
];

fn sub(
    name: &str,
    group: &str,
    version: &str,
    kind: &str,
    verbs: &'static [&'static str],
) -> Subresource {
    Subresource {
        name: name.into(),
        kind: kind.into(),
        group: group.into(),
        version: version.into(),
        verbs,
    }
}

/// Builds a built-in entry; `subs` names subresources by convention.
#[allow(clippy::too_many_arguments)]
fn builtin<T: schemars::JsonSchema + serde::de::DeserializeOwned>(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    categories: &[&str],
    subs: &[&str],
) -> Resource {
    let subresources = subs
        .iter()
        .map(|s| match *s {
            "status" => sub("status", group, version, kind, GET_UPDATE),
            "scale" => sub("scale", "autoscaling", "v1", "Scale", GET_UPDATE),
            "binding" => sub("binding", "", "v1", "Binding", CREATE_VERB),
            "eviction" => sub("eviction", "policy", "v1", "Eviction", CREATE_VERB),
            "token" => sub(
                "token",
                "authentication.k8s.io",
                "v1",
                "TokenRequest",
                CREATE_VERB,
            ),
            "log" => sub("log", "", "v1", "Pod", GET_VERB),
            "exec" => sub("exec", "", "v1", "PodExecOptions", &["create", "get"]),
            "attach" => sub("attach", "", "v1", "PodAttachOptions", &["create", "get"]),
            "portforward" => sub(
                "portforward",
                "",
                "v1",
                "PodPortForwardOptions",
                &["create", "get"],
            ),
            "proxy" => sub(
                "proxy",
                "",
                "v1",
                if kind == "Node" {
                    "NodeProxyOptions"
                } else {
                    "ServiceProxyOptions"
                },
                ALL_VERBS,
            ),
            "ephemeralcontainers" => sub("ephemeralcontainers", group, version, kind, GET_UPDATE),
            "resize" => sub("resize", group, version, kind, GET_UPDATE),
            other => sub(other, group, version, kind, GET_UPDATE),
        })
        .collect();
    Resource {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        subresources,
        storage: (group.into(), plural.into()),
        create_only: false,
        computed: false,
        schema: Some(|g: &mut SchemaGenerator| g.subschema_for::<T>()),
        schema_name: Some(|| T::schema_name().into_owned()),
        decode_check: Some(|v: &Value| T::deserialize(v).map(|_| ()).map_err(|e| e.to_string())),
        custom: None,
    }
}

fn create_only<T: schemars::JsonSchema + serde::de::DeserializeOwned>(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
) -> Resource {
    Resource {
        create_only: true,
        ..builtin::<T>(group, version, kind, plural, namespaced, &[], &[], &[])
    }
}

/// Every built-in resource kinglet serves.
pub fn builtins() -> Vec<Resource> {
    use k8s_openapi::api::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as aggregator;
    const ALL: &[&str] = &["all"];
    const N: bool = true;
    const C: bool = false;
    let mut events_v1 = builtin::<events::v1::Event>(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        N,
        &["ev"],
        &[],
        &[],
    );
    // events.k8s.io/v1 and core/v1 Events are one stored collection (`/registry/events/`), as
    // upstream's storage factory makes them cohabit.
    events_v1.storage = (String::new(), "events".into());
    vec![
        builtin::<core::v1::Namespace>(
            "",
            "v1",
            "Namespace",
            "namespaces",
            C,
            &["ns"],
            &[],
            &["status", "finalize"],
        ),
        builtin::<core::v1::Pod>(
            "",
            "v1",
            "Pod",
            "pods",
            N,
            &["po"],
            ALL,
            &[
                "status",
                "binding",
                "eviction",
                "log",
                "exec",
                "attach",
                "portforward",
                "proxy",
                "ephemeralcontainers",
                "resize",
            ],
        ),
        builtin::<core::v1::Service>(
            "",
            "v1",
            "Service",
            "services",
            N,
            &["svc"],
            ALL,
            &["status", "proxy"],
        ),
        builtin::<core::v1::Endpoints>("", "v1", "Endpoints", "endpoints", N, &["ep"], &[], &[]),
        builtin::<core::v1::Node>(
            "",
            "v1",
            "Node",
            "nodes",
            C,
            &["no"],
            &[],
            &["status", "proxy"],
        ),
        builtin::<core::v1::ConfigMap>("", "v1", "ConfigMap", "configmaps", N, &["cm"], &[], &[]),
        builtin::<core::v1::Secret>("", "v1", "Secret", "secrets", N, &[], &[], &[]),
        builtin::<core::v1::ServiceAccount>(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            N,
            &["sa"],
            &[],
            &["token"],
        ),
        builtin::<core::v1::Event>("", "v1", "Event", "events", N, &["ev"], &[], &[]),
        builtin::<core::v1::PersistentVolume>(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            C,
            &["pv"],
            &[],
            &["status"],
        ),
        builtin::<core::v1::PersistentVolumeClaim>(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            N,
            &["pvc"],
            &[],
            &["status"],
        ),
        builtin::<core::v1::LimitRange>(
            "",
            "v1",
            "LimitRange",
            "limitranges",
            N,
            &["limits"],
            &[],
            &[],
        ),
        builtin::<core::v1::ResourceQuota>(
            "",
            "v1",
            "ResourceQuota",
            "resourcequotas",
            N,
            &["quota"],
            &[],
            &["status"],
        ),
        builtin::<core::v1::ReplicationController>(
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            N,
            &["rc"],
            ALL,
            &["status", "scale"],
        ),
        builtin::<core::v1::PodTemplate>("", "v1", "PodTemplate", "podtemplates", N, &[], &[], &[]),
        create_only::<core::v1::Binding>("", "v1", "Binding", "bindings", N),
        builtin::<apps::v1::Deployment>(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            N,
            &["deploy"],
            ALL,
            &["status", "scale"],
        ),
        builtin::<apps::v1::ReplicaSet>(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            N,
            &["rs"],
            ALL,
            &["status", "scale"],
        ),
        builtin::<apps::v1::StatefulSet>(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            N,
            &["sts"],
            ALL,
            &["status", "scale"],
        ),
        builtin::<apps::v1::DaemonSet>(
            "apps",
            "v1",
            "DaemonSet",
            "daemonsets",
            N,
            &["ds"],
            ALL,
            &["status"],
        ),
        builtin::<apps::v1::ControllerRevision>(
            "apps",
            "v1",
            "ControllerRevision",
            "controllerrevisions",
            N,
            &[],
            &[],
            &[],
        ),
        builtin::<batch::v1::Job>("batch", "v1", "Job", "jobs", N, &[], ALL, &["status"]),
        builtin::<batch::v1::CronJob>(
            "batch",
            "v1",
            "CronJob",
            "cronjobs",
            N,
            &["cj"],
            ALL,
            &["status"],
        ),
        builtin::<discovery::v1::EndpointSlice>(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            N,
            &[],
            &[],
            &[],
        ),
        builtin::<coordination::v1::Lease>(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            N,
            &[],
            &[],
            &[],
        ),
        builtin::<rbac::v1::Role>(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            N,
            &[],
            &[],
            &[],
        ),
        builtin::<rbac::v1::RoleBinding>(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            N,
            &[],
            &[],
            &[],
        ),
        builtin::<rbac::v1::ClusterRole>(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            C,
            &[],
            &[],
            &[],
        ),
        builtin::<rbac::v1::ClusterRoleBinding>(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            C,
            &[],
            &[],
            &[],
        ),
        builtin::<networking::v1::NetworkPolicy>(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            N,
            &["netpol"],
            &[],
            &[],
        ),
        builtin::<networking::v1::Ingress>(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            N,
            &["ing"],
            &[],
            &["status"],
        ),
        builtin::<networking::v1::IngressClass>(
            "networking.k8s.io",
            "v1",
            "IngressClass",
            "ingressclasses",
            C,
            &[],
            &[],
            &[],
        ),
        builtin::<storage::v1::StorageClass>(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            C,
            &["sc"],
            &[],
            &[],
        ),
        builtin::<storage::v1::CSIDriver>(
            "storage.k8s.io",
            "v1",
            "CSIDriver",
            "csidrivers",
            C,
            &[],
            &[],
            &[],
        ),
        builtin::<storage::v1::CSINode>(
            "storage.k8s.io",
            "v1",
            "CSINode",
            "csinodes",
            C,
            &[],
            &[],
            &[],
        ),
        builtin::<storage::v1::VolumeAttachment>(
            "storage.k8s.io",
            "v1",
            "VolumeAttachment",
            "volumeattachments",
            C,
            &[],
            &[],
            &["status"],
        ),
        builtin::<policy::v1::PodDisruptionBudget>(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            N,
            &["pdb"],
            &[],
            &["status"],
        ),
        builtin::<autoscaling::v2::HorizontalPodAutoscaler>(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            N,
            &["hpa"],
            ALL,
            &["status"],
        ),
        builtin::<scheduling::v1::PriorityClass>(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            C,
            &["pc"],
            &[],
            &[],
        ),
        events_v1,
        builtin::<node::v1::RuntimeClass>(
            "node.k8s.io",
            "v1",
            "RuntimeClass",
            "runtimeclasses",
            C,
            &[],
            &[],
            &[],
        ),
        builtin::<certificates::v1::CertificateSigningRequest>(
            "certificates.k8s.io",
            "v1",
            "CertificateSigningRequest",
            "certificatesigningrequests",
            C,
            &["csr"],
            &[],
            &["status", "approval"],
        ),
        builtin::<apiext::CustomResourceDefinition>(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            C,
            &["crd", "crds"],
            &["api-extensions"],
            &["status"],
        ),
        create_only::<authentication::v1::TokenReview>(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            C,
        ),
        create_only::<authentication::v1::SelfSubjectReview>(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            C,
        ),
        create_only::<authorization::v1::SubjectAccessReview>(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
            C,
        ),
        create_only::<authorization::v1::SelfSubjectAccessReview>(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            C,
        ),
        create_only::<authorization::v1::SelfSubjectRulesReview>(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            C,
        ),
        create_only::<authorization::v1::LocalSubjectAccessReview>(
            "authorization.k8s.io",
            "v1",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            N,
        ),
        builtin::<admissionregistration::v1::MutatingWebhookConfiguration>(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            C,
            &[],
            &["api-extensions"],
            &[],
        ),
        builtin::<admissionregistration::v1::ValidatingWebhookConfiguration>(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            C,
            &[],
            &["api-extensions"],
            &[],
        ),
        builtin::<admissionregistration::v1::ValidatingAdmissionPolicy>(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            C,
            &[],
            &["api-extensions"],
            &["status"],
        ),
        builtin::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            C,
            &[],
            &["api-extensions"],
            &[],
        ),
        builtin::<aggregator::APIService>(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
            "apiservices",
            C,
            &[],
            &["api-extensions"],
            &["status"],
        ),
        builtin::<flowcontrol::v1::FlowSchema>(
            "flowcontrol.apiserver.k8s.io",
            "v1",
            "FlowSchema",
            "flowschemas",
            C,
            &[],
            &[],
            &["status"],
        ),
        builtin::<flowcontrol::v1::PriorityLevelConfiguration>(
            "flowcontrol.apiserver.k8s.io",
            "v1",
            "PriorityLevelConfiguration",
            "prioritylevelconfigurations",
            C,
            &[],
            &[],
            &["status"],
        ),
        resource_metrics("NodeMetrics", "nodes", C),
        resource_metrics("PodMetrics", "pods", N),
    ]
}

/// A `metrics.k8s.io/v1beta1` resource, served from the kubelets' resource usage.
fn resource_metrics(kind: &str, plural: &str, namespaced: bool) -> Resource {
    Resource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        kind: kind.into(),
        plural: plural.into(),
        // As metrics-server registers them.
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        subresources: Vec::new(),
        storage: ("metrics.k8s.io".into(), plural.into()),
        create_only: false,
        computed: true,
        schema: None,
        schema_name: None,
        decode_check: None,
        custom: None,
    }
}

/// The live resource table: built-ins plus whatever CRDs currently define.
pub struct Registry {
    builtins: Vec<Arc<Resource>>,
    custom: RwLock<Vec<Arc<Resource>>>,
    /// Bumped on every change, so cached discovery/OpenAPI documents know when to rebuild.
    generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            builtins: builtins().into_iter().map(Arc::new).collect(),
            custom: RwLock::new(Vec::new()),
            generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every served resource, built-ins first.
    pub fn all(&self) -> Vec<Arc<Resource>> {
        let mut v = self.builtins.clone();
        v.extend(
            self.custom
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        v
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.builtins
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
            .or_else(|| {
                let custom = self.custom.read().unwrap_or_else(|e| e.into_inner());
                custom
                    .iter()
                    .find(|r| r.group == group && r.version == version && r.plural == plural)
                    .cloned()
            })
    }

    /// Replaces the custom resources defined by CRDs.
    pub fn set_custom(&self, resources: Vec<Resource>) {
        *self.custom.write().unwrap_or_else(|e| e.into_inner()) =
            resources.into_iter().map(Arc::new).collect();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Group -> versions (preferred first), in a stable order: core first, then built-ins, then custom.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut order: Vec<String> = Vec::new();
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.all() {
            if !order.contains(&r.group) {
                order.push(r.group.clone());
            }
            let vs = versions.entry(r.group.clone()).or_default();
            if !vs.contains(&r.version) {
                vs.push(r.version.clone());
            }
        }
        order
            .into_iter()
            .map(|g| {
                let mut vs = versions.remove(&g).unwrap_or_default();
                vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                (g, vs)
            })
            .collect()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// Kubernetes version ordering: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_of(group: &str, plural: &str) -> String {
        builtins()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural && !r.computed)
            .map(|r| r.prefix())
            .unwrap_or_else(|| panic!("{group}/{plural} not built in"))
    }

    #[test]
    fn keys_are_laid_out_as_upstream_does() {
        assert_eq!(prefix_of("", "pods"), "/registry/pods/");
        assert_eq!(prefix_of("", "nodes"), "/registry/minions/");
        assert_eq!(prefix_of("", "services"), "/registry/services/specs/");
        assert_eq!(prefix_of("", "endpoints"), "/registry/services/endpoints/");
        assert_eq!(
            prefix_of("", "replicationcontrollers"),
            "/registry/controllers/"
        );
        assert_eq!(
            prefix_of("networking.k8s.io", "ingresses"),
            "/registry/ingress/"
        );
        assert_eq!(prefix_of("apps", "deployments"), "/registry/deployments/");
        assert_eq!(
            prefix_of("rbac.authorization.k8s.io", "clusterroles"),
            "/registry/clusterroles/"
        );
        assert_eq!(
            prefix_of("coordination.k8s.io", "leases"),
            "/registry/leases/"
        );
        assert_eq!(prefix_of("events.k8s.io", "events"), "/registry/events/");
        assert_eq!(prefix_of("", "events"), "/registry/events/");
        assert_eq!(
            prefix_of("apiextensions.k8s.io", "customresourcedefinitions"),
            "/registry/apiextensions.k8s.io/customresourcedefinitions/"
        );
        assert_eq!(
            prefix_of("apiregistration.k8s.io", "apiservices"),
            "/registry/apiregistration.k8s.io/apiservices/"
        );
        let pods = builtins().into_iter().find(|r| r.plural == "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(pods.ns_prefix(Some("default")), "/registry/pods/default/");
        let custom = Resource {
            group: "example.com".into(),
            storage: ("example.com".into(), "pods".into()),
            custom: Some(Arc::new(CustomInfo::default())),
            ..pods
        };
        assert_eq!(custom.prefix(), "/registry/example.com/pods/");
    }

    #[test]
    fn only_one_storage_shares_a_prefix() {
        let all = builtins();
        for a in &all {
            assert!(a.prefix().starts_with("/registry/") && a.prefix().ends_with('/'));
            for b in &all {
                if a.storage == b.storage {
                    assert_eq!(a.prefix(), b.prefix());
                    continue;
                }
                assert!(
                    !b.prefix().starts_with(&a.prefix()),
                    "{a:?} ({}) and {b:?} ({}) overlap",
                    a.prefix(),
                    b.prefix()
                );
            }
        }
    }
}
