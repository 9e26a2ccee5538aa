//! Per-kind behaviour, one module per kind (or small family): defaulting, mutating admission,
//! validation, `kubectl get` columns, field selectors, status and generation rules on create and
//! update, graceful deletion and the side effects of a write, following upstream's registry
//! strategies. Every module implements [`KindBehaviour`]; [`of`] finds a resource's
//! implementation by the group and plural it is stored under. The generic machinery
//! (`admission`, `table`, `lifecycle`, `list`) asks that one implementation and never matches
//! on kinds itself.

mod admissionregistration;
mod apiextensions;
mod apiregistration;
mod autoscaling;
mod certificates;
mod config;
mod endpoints;
mod event;
mod lease;
mod namespace;
mod network_policy;
mod node;
mod pod;
mod pod_disruption_budget;
mod priority_class;
mod rbac;
mod service;
mod service_account;
mod storage_class;
mod volume;
mod workloads;

pub(crate) use event::{from_core_event, to_core_event};

use futures::future::BoxFuture;
use serde_json::Value;

use crate::Api;
use crate::object::{check_dns_subdomain, field_string};
use crate::registry::Resource;
use crate::selectors::FieldSelector;
use crate::status::{ApiResult, Cause};
use crate::table::Columns;

/// A `metadata.name` rule: the problem with a name, if any.
pub type NameCheck = fn(&str) -> Option<String>;

/// What is special about a kind. Every method has the behaviour of a kind with nothing special,
/// so a kind implements only what upstream's strategy for it does differently.
pub trait KindBehaviour: Sync {
    /// The rule for `metadata.name`, if not a DNS subdomain (see [`name_check`]).
    fn name_check(&self) -> Option<NameCheck> {
        None
    }

    /// Upstream's `SetDefaults_*` for the kind, on a request body after its type checks.
    fn defaults(&self, _obj: &mut Value) {}

    /// The kind's mutating admission plugins, after defaulting (`old` is set for updates).
    fn admit<'a>(
        &'a self,
        _api: &'a Api,
        _res: &'a Resource,
        _obj: &'a mut Value,
        _old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Records who creates an object, for kinds whose strategy reads the request's user
    /// (upstream's CertificateSigningRequest PrepareForCreate).
    fn set_requester(&self, _obj: &mut Value, _user: &crate::auth::UserInfo) {}

    /// Kind-specific validation, after the metadata checks every object gets.
    fn validate(&self, _res: &Resource, _obj: &Value, _old: Option<&Value>, _out: &mut Vec<Cause>) {
    }

    /// `kubectl get` columns, if not just Name and Age.
    fn columns(&self) -> Option<Columns> {
        None
    }

    /// Field-selector labels supported beyond `metadata.name` / `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// The value a field selector compares for `field` of a stored object.
    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        field_string(obj, field)
    }

    /// Whether `metadata.generation` is maintained for this kind.
    fn tracks_generation(&self, res: &Resource, obj: &Value) -> bool {
        res.is_custom() || res.has_status() || obj.get("spec").is_some()
    }

    /// The part of an object whose change bumps `metadata.generation`.
    fn generation_relevant(&self, res: &Resource, obj: &Value) -> Value {
        let mut v = obj.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if res.has_status() {
                m.remove("status");
            }
        }
        v
    }

    /// Prepares a new object for creation: status the client may not set is reset.
    fn prepare_for_create(&self, res: &Resource, obj: &mut Value) {
        strip_status(res, obj);
    }

    /// The graceful period a deletion waits for, if any (`requested` from DeleteOptions).
    fn graceful_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Undoes what admission reserved when a create does not happen.
    fn create_failed<'a>(&'a self, _api: &'a Api, _obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Releases what `old` held and `new`, the update just stored, no longer holds.
    fn after_update<'a>(
        &'a self,
        _api: &'a Api,
        _old: &'a Value,
        _new: &'a Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Undoes what admission reserved for `new` when the update of `old` is not stored
    /// (refused, failed, or a dry run).
    fn update_failed<'a>(
        &'a self,
        _api: &'a Api,
        _old: &'a Value,
        _new: &'a Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Releases what the object held once it is gone.
    fn after_delete<'a>(&'a self, _api: &'a Api, _obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether the object's own `spec.finalizers` still hold back its removal.
    fn spec_finalizers_pending(&self, _obj: &Value) -> bool {
        false
    }

    /// Marks an object whose deletion has begun (beyond `deletionTimestamp`).
    fn mark_deleting(&self, _obj: &mut Value) {}
}

/// The built-in resources (by stored group and plural) whose upstream registry sets
/// `ReturnDeletedObject`: a delete that removes one answers with the object, others with a
/// success Status. Read from each `pkg/registry/*/*/storage/storage.go`; custom resources never
/// set it (`apiextensions-apiserver/pkg/registry/customresource`).
const RETURN_DELETED_OBJECT: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "persistentvolumeclaims"),
    ("", "persistentvolumes"),
    ("", "pods"),
    ("", "podtemplates"),
    ("", "resourcequotas"),
    ("", "serviceaccounts"),
    ("", "services"),
    ("storage.k8s.io", "csidrivers"),
    ("storage.k8s.io", "csinodes"),
    ("storage.k8s.io", "storageclasses"),
    ("storage.k8s.io", "volumeattachments"),
];

/// Whether a completed delete of `res` answers with the object rather than a Status.
pub fn delete_returns_object(res: &Resource) -> bool {
    !res.is_custom()
        && RETURN_DELETED_OBJECT
            .iter()
            .any(|(g, p)| *g == res.storage.0 && *p == res.storage.1)
}

/// Status is set by the status subresource only: a create drops what the client sent.
pub(crate) fn strip_status(res: &Resource, obj: &mut Value) {
    if res.has_status()
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
}

/// The name rule of kinds whose objects may have any name (Nodes, Events).
fn any_name(_: &str) -> Option<String> {
    None
}

/// A kind with nothing special.
struct Plain;

impl KindBehaviour for Plain {}

/// The behaviour of a resource's kind, by the group and plural it is stored under (so both
/// Event versions share one).
pub fn of(res: &Resource) -> &'static dyn KindBehaviour {
    lookup(&res.storage.0, &res.storage.1)
}

/// The core kind sharing `res`'s plural. A few rules have always been chosen by plural alone and
/// so reach custom resources of that plural too: the `metadata.name` rule and namespace-style
/// deletion (see `lifecycle`).
pub fn by_plural(res: &Resource) -> &'static dyn KindBehaviour {
    lookup("", &res.plural)
}

fn lookup(group: &str, plural: &str) -> &'static dyn KindBehaviour {
    match (group, plural) {
        ("", "pods") => &pod::Pods,
        ("", "podtemplates") => &pod::PodTemplates,
        ("", "services") => &service::Services,
        ("", "endpoints") => &endpoints::Endpoints,
        ("", "namespaces") => &namespace::Namespaces,
        ("", "nodes") => &node::Nodes,
        ("", "events") => &event::Events,
        ("", "configmaps") => &config::ConfigMaps,
        ("", "secrets") => &config::Secrets,
        ("", "serviceaccounts") => &service_account::ServiceAccounts,
        ("", "persistentvolumeclaims") => &volume::PersistentVolumeClaims,
        ("", "persistentvolumes") => &volume::PersistentVolumes,
        ("", "replicationcontrollers") => &workloads::replicaset::ReplicationControllers,
        ("apps", "deployments") => &workloads::deployment::Deployments,
        ("apps", "replicasets") => &workloads::replicaset::ReplicaSets,
        ("apps", "statefulsets") => &workloads::statefulset::StatefulSets,
        ("apps", "daemonsets") => &workloads::daemonset::DaemonSets,
        ("batch", "jobs") => &workloads::job::Jobs,
        ("batch", "cronjobs") => &workloads::cronjob::CronJobs,
        ("autoscaling", "horizontalpodautoscalers") => &autoscaling::HorizontalPodAutoscalers,
        ("coordination.k8s.io", "leases") => &lease::Leases,
        ("discovery.k8s.io", "endpointslices") => &endpoints::EndpointSlices,
        ("networking.k8s.io", "networkpolicies") => &network_policy::NetworkPolicies,
        ("policy", "poddisruptionbudgets") => &pod_disruption_budget::PodDisruptionBudgets,
        ("scheduling.k8s.io", "priorityclasses") => &priority_class::PriorityClasses,
        ("storage.k8s.io", "storageclasses") => &storage_class::StorageClasses,
        ("certificates.k8s.io", "certificatesigningrequests") => {
            &certificates::CertificateSigningRequests
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            &rbac::RoleBindings
        }
        ("rbac.authorization.k8s.io", _) => &rbac::RbacObjects,
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            &apiextensions::CustomResourceDefinitions
        }
        ("apiextensions.k8s.io", _) => &apiextensions::ApiExtensionsObjects,
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations" | "validatingwebhookconfigurations",
        ) => &admissionregistration::WebhookConfigurations,
        ("apiregistration.k8s.io", "apiservices") => &apiregistration::ApiServices,
        _ => &Plain,
    }
}

/// The `metadata.name` rule of `res`: the rule of the core kind of its plural if that has one,
/// else its own kind's, else DNS subdomain.
pub fn name_check(res: &Resource) -> NameCheck {
    by_plural(res)
        .name_check()
        .or_else(|| of(res).name_check())
        .unwrap_or(check_dns_subdomain)
}

/// Checks that every field of a selector is supported for this kind.
pub fn check_field_selector(res: &Resource, fields: &FieldSelector) -> Result<(), String> {
    let selectable = of(res).selectable_fields();
    for (f, _, _) in &fields.terms {
        if f != "metadata.name" && f != "metadata.namespace" && !selectable.contains(&f.as_str()) {
            return Err(format!("field label not supported: {f}"));
        }
    }
    Ok(())
}
