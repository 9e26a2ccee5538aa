//! The PersistentVolume controller (upstream's persistent-volume-binder) with kinglet's built-in
//! local-path provisioner (k3s ships rancher's local-path-provisioner as a pod; here it needs no
//! image).
//!
//! Binding: a Pending claim gets the smallest Available volume that fits it (class, access
//! modes, size, volume mode, selector), volumes pre-bound to it first; both sides are written
//! as upstream does (`pv.spec.claimRef`, `pvc.spec.volumeName`, the `bind-completed` and
//! `bound-by-controller` annotations, phases Bound). A claim of a `WaitForFirstConsumer` class
//! waits for the scheduler's `volume.kubernetes.io/selected-node`; then a volume whose node
//! affinity admits that node is bound, or one is provisioned. A claim without a class gets
//! the default class (upstream's retroactive default StorageClass assignment).
//!
//! Provisioning (class provisioner [`PROVISIONER`]): a hostPath volume
//! `<storage path>/pvc-<uid>_<namespace>_<name>` pinned to the selected node by node affinity,
//! as local-path-provisioner makes them, with the finalizer
//! [`LOCAL_PATH_CLEANUP_FINALIZER`] from the start. The node's kubelet creates the directory
//! when a pod mounts it.
//!
//! Reclaim: a volume whose claim is gone is Released; with `Delete` a provisioned volume is
//! deleted, and the kubelet of its node, seeing it deleted with the cleanup finalizer, removes
//! the directory and then the finalizer (the explicit signal local-path-provisioner's helper
//! pod is: a volume merely missing from the API server never loses its data). Other volumes
//! with `Delete` are marked Failed (no deleter plugin), as upstream's hostPath has none
//! outside /tmp.
//!
//! Protection (upstream's pvc-protection and pv-protection controllers, each as its own
//! identity): a claim being deleted keeps its `kubernetes.io/pvc-protection` finalizer while a
//! pod that has not terminated uses it, a volume its `kubernetes.io/pv-protection` one while
//! it is Bound, so that no volume is deleted under a running pod.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::informers::{MEDIUM_BUFFER, Shared};
use super::util::Context;
use kinglet_core::resources::parse_milli;

/// The provisioner name of kinglet's local-path volumes; the API server's bootstrap makes the
/// default class `local-path` with it.
pub use kinglet_core::storage::LOCAL_PATH_PROVISIONER as PROVISIONER;
use kinglet_core::storage::{LOCAL_PATH_CLEANUP_FINALIZER, PROVISIONED_BY};
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// The label local volumes are pinned to a node by.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Everything is looked at again this often, whatever changed.
const RESYNC: Duration = Duration::from_secs(15);

/// The name of a volume provisioned for `claim`, and its directory's name under the storage
/// path (local-path-provisioner's layout).
pub fn provisioned_names(claim: &PersistentVolumeClaim) -> (String, String) {
    let pv = format!("pvc-{}", claim.uid().unwrap_or_default());
    let dir = format!(
        "{pv}_{}_{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    );
    (pv, dir)
}

/// A claim's class name; no class and `""` both mean "no class" for matching.
pub fn claim_class(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_class(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn storage(
    q: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> i128 {
    q.and_then(|m| m.get("storage"))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0)
}

fn requested(c: &PersistentVolumeClaim) -> i128 {
    storage(
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

fn capacity(v: &PersistentVolume) -> i128 {
    storage(v.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

/// Whether `v`'s claimRef names `c` (by uid when it has one, as upstream's IsVolumeBoundToClaim).
pub fn bound_to(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name.as_deref() == Some(&c.name_any())
        && r.namespace.as_deref() == c.namespace().as_deref()
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == c.uid().as_deref())
}

fn phase(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether `node` (its name and labels) satisfies `v`'s required node affinity (none: any node).
pub fn admits_node(v: &PersistentVolume, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(required) = v
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    required.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.iter().flatten().all(|r| {
            let value = labels.get(&r.key);
            let values = r.values.as_deref().unwrap_or_default();
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
        let fields = t.match_fields.iter().flatten().all(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            r.key == "metadata.name"
                && match r.operator.as_str() {
                    "In" => values.iter().any(|v| v == node),
                    "NotIn" => values.iter().all(|v| v != node),
                    _ => false,
                }
        });
        let nonempty = t.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
            || t.match_fields.as_ref().is_some_and(|f| !f.is_empty());
        nonempty && exprs && fields
    })
}

/// Why `v` cannot serve `claim` whatever binds them, if it cannot: being deleted, too small, or
/// another volume mode or missing access modes (upstream filters by access modes before
/// anything else).
fn unfit(claim: &PersistentVolumeClaim, v: &PersistentVolume) -> Option<&'static str> {
    let cs = claim.spec.as_ref()?;
    let Some(vs) = v.spec.as_ref() else {
        return Some("volume has no spec");
    };
    if v.metadata.deletion_timestamp.is_some() {
        return Some("volume is being deleted");
    }
    if capacity(v) < requested(claim) {
        return Some("requested PV is too small");
    }
    let mode = |m: Option<&str>| m.unwrap_or("Filesystem").to_string();
    if mode(vs.volume_mode.as_deref()) != mode(cs.volume_mode.as_deref()) {
        return Some("incompatible volumeMode");
    }
    let has = vs.access_modes.as_deref().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| has.contains(m)) {
        return Some("incompatible accessMode");
    }
    None
}

/// Why a claim naming `v` in `spec.volumeName` cannot bind to it (upstream's
/// checkVolumeSatisfyClaim): [`unfit`], or another class.
pub fn claim_mismatch(claim: &PersistentVolumeClaim, v: &PersistentVolume) -> Option<&'static str> {
    unfit(claim, v).or_else(|| {
        (volume_class(v) != claim_class(claim)).then_some("storageClassName does not match")
    })
}

/// The best volume for `claim` among `volumes` (upstream's FindMatchingVolume): one pre-bound to
/// it, else the smallest Available one of its class that has its access modes, volume mode and
/// selector and is large enough. `node` (name, labels), when set, must satisfy the volume's
/// node affinity; without it, volumes of a delayed-binding class are not matched (the
/// scheduler picks their node first).
pub fn find_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<(&str, &BTreeMap<String, String>)>,
    delayed: bool,
) -> Option<&'a PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let selector = spec.selector.as_ref();
    let mut best: Option<&PersistentVolume> = None;
    for v in volumes {
        let Some(vs) = v.spec.as_ref() else { continue };
        if unfit(claim, v).is_some() {
            continue;
        }
        let node_ok = node.is_none_or(|(n, l)| admits_node(v, n, l));
        if bound_to(v, claim) {
            if node_ok {
                return Some(v);
            }
            continue;
        }
        if node.is_none() && delayed {
            continue;
        }
        if phase(v) != "Available" || vs.claim_ref.is_some() {
            continue;
        }
        // An empty selector selects every volume (LabelSelectorAsSelector).
        let empty = |s: &LabelSelector| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        };
        if selector.is_some_and(|s| !empty(s) && !kinglet_core::pods::selects(s, &v.metadata)) {
            continue;
        }
        if volume_class(v) != claim_class(claim) || !node_ok {
            continue;
        }
        let smaller =
            best.is_none_or(|b| (capacity(v), v.name_any()) < (capacity(b), b.name_any()));
        if smaller {
            best = Some(v);
        }
    }
    best
}

/// The default class: the newest marked default (upstream's GetDefaultClass since 1.26).
pub fn default_class(classes: &[Arc<StorageClass>]) -> Option<&StorageClass> {
    classes
        .iter()
        .filter(|c| {
            let a = c.annotations();
            a.get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")
                || a.get(BETA_DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")
        })
        .max_by_key(|c| {
            (
                c.metadata.creation_timestamp.as_ref().map(|t| t.0),
                c.name_any(),
            )
        })
        .map(AsRef::as_ref)
}

/// Whether claims of `class` wait for a pod to be scheduled before they bind.
pub fn delays_binding(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

struct Binder {
    ctx: Arc<Context>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    protection: Protection,
    storage_path: PathBuf,
    /// (object uid, reason) of events already recorded, so a waiting claim is told once.
    told: HashSet<(String, String)>,
}

type Result<T> = kube::Result<T>;

impl Binder {
    async fn event_once<K: kube::Resource<DynamicType = ()>>(
        &mut self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let key = (
            obj.meta().uid.clone().unwrap_or_default(),
            format!("{reason}/{note}"),
        );
        if self.told.insert(key) {
            self.ctx.event(obj, warning, reason, note).await;
        }
    }

    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        (!name.is_empty())
            .then(|| self.classes.get(&ObjectRef::new(name)))
            .flatten()
    }

    async fn sync_all(&mut self) {
        let mut claims = self.claims.state();
        claims.sort_by_key(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for c in claims {
            if let Err(e) = self.sync_claim(&c).await {
                tracing::debug!(claim = %c.name_any(), "persistent volume binder: {e}");
            }
        }
        for v in self.volumes.state() {
            if let Err(e) = self.sync_volume(&v).await {
                tracing::debug!(volume = %v.name_any(), "persistent volume binder: {e}");
            }
        }
        // Forget what was told about objects that are gone.
        let live: HashSet<String> = self
            .claims
            .state()
            .iter()
            .filter_map(|c| c.uid())
            .chain(self.volumes.state().iter().filter_map(|v| v.uid()))
            .collect();
        self.told.retain(|(uid, _)| live.contains(uid));
    }

    async fn sync_claim(&mut self, c: &PersistentVolumeClaim) -> Result<()> {
        if c.metadata.deletion_timestamp.is_some() {
            return self.unprotect_claim(c).await;
        }
        let volume_name = c
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty());
        match volume_name {
            None => self.sync_unbound_claim(c).await,
            Some(name) => {
                match self.volumes.get(&ObjectRef::new(&name)) {
                    None => {
                        self.claim_phase(c, "Lost").await?;
                        let note = "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!";
                        self.event_once(c, true, "ClaimLost", note.into()).await;
                        Ok(())
                    }
                    Some(v) if v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none() => {
                        // Pre-bound by the claim: the volume's side is missing. Bound only if
                        // the volume satisfies the claim, else the claim stays Pending.
                        if let Some(why) = claim_mismatch(c, &v) {
                            self.claim_phase(c, "Pending").await?;
                            let note = format!("Cannot bind to requested volume \"{name}\": {why}");
                            self.event_once(c, true, "VolumeMismatch", note).await;
                            return Ok(());
                        }
                        self.bind(&v, c).await
                    }
                    Some(v) if bound_to(&v, c) => self.bind(&v, c).await,
                    Some(_) => {
                        self.claim_phase(c, "Lost").await?;
                        let note = "Two claims are bound to the same volume, this one is bound incorrectly";
                        self.event_once(c, true, "ClaimMisbound", note.into()).await;
                        Ok(())
                    }
                }
            }
        }
    }

    async fn sync_unbound_claim(&mut self, c: &PersistentVolumeClaim) -> Result<()> {
        let class_set = c
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_ref())
            .is_some();
        if !class_set && let Some(default) = default_class(&self.classes.state()) {
            let mut c = c.clone();
            if let Some(spec) = c.spec.as_mut() {
                spec.storage_class_name = Some(default.name_any());
            }
            self.claims_api(&c)
                .replace(&c.name_any(), &PostParams::default(), &c)
                .await?;
            return Ok(());
        }
        let class = self.class(claim_class(c));
        let delayed = delays_binding(class.as_deref());
        let selected = c.annotations().get(SELECTED_NODE).cloned();
        let node = selected
            .as_ref()
            .and_then(|n| self.nodes.get(&ObjectRef::new(n)));
        let labels = node
            .as_ref()
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let place = selected.as_deref().map(|n| (n, &labels));
        let volumes = self.volumes.state();
        if let Some(v) = find_match(c, volumes.iter().map(AsRef::as_ref), place, delayed) {
            let v = v.clone();
            return self.bind(&v, c).await;
        }
        if delayed && selected.is_none() {
            let note = "waiting for first consumer to be created before binding";
            self.event_once(c, false, "WaitForFirstConsumer", note.into())
                .await;
            return Ok(());
        }
        match class.as_deref() {
            Some(sc) if sc.provisioner == PROVISIONER => self.provision(c, sc, selected).await,
            Some(sc) => {
                // Another provisioner's (kubernetes.io/no-provisioner too, as upstream): it
                // watches for this annotation, or an administrator makes the volume.
                self.annotate_provisioner(c, &sc.provisioner).await?;
                let note = format!(
                    "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                    sc.provisioner
                );
                self.event_once(c, false, "ExternalProvisioning", note)
                    .await;
                Ok(())
            }
            None if claim_class(c).is_empty() => {
                self.event_once(
                    c,
                    false,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set"
                        .into(),
                )
                .await;
                Ok(())
            }
            None => {
                let note = format!(
                    "storageclass.storage.k8s.io \"{}\" not found",
                    claim_class(c)
                );
                self.event_once(c, true, "ProvisioningFailed", note).await;
                Ok(())
            }
        }
    }

    async fn annotate_provisioner(
        &self,
        c: &PersistentVolumeClaim,
        provisioner: &str,
    ) -> Result<()> {
        let a = c.annotations();
        if a.get(STORAGE_PROVISIONER).map(String::as_str) == Some(provisioner)
            && a.get(BETA_STORAGE_PROVISIONER).map(String::as_str) == Some(provisioner)
        {
            return Ok(());
        }
        let mut c = c.clone();
        let a = c.annotations_mut();
        a.insert(STORAGE_PROVISIONER.into(), provisioner.into());
        a.insert(BETA_STORAGE_PROVISIONER.into(), provisioner.into());
        self.claims_api(&c)
            .replace(&c.name_any(), &PostParams::default(), &c)
            .await
            .map(|_| ())
    }

    /// Creates the local-path volume of `c` on its selected node, pre-bound to `c`.
    async fn provision(
        &mut self,
        c: &PersistentVolumeClaim,
        sc: &StorageClass,
        selected: Option<String>,
    ) -> Result<()> {
        self.annotate_provisioner(c, PROVISIONER).await?;
        let Some(node) = selected else {
            // local-path-provisioner refuses Immediate classes likewise: a local volume needs
            // the node its pod will run on.
            let note = format!(
                "failed to provision volume with StorageClass \"{}\": configuration error, no node was specified",
                sc.name_any()
            );
            self.event_once(c, true, "ProvisioningFailed", note).await;
            return Ok(());
        };
        let spec = c.spec.clone().unwrap_or_default();
        if spec.volume_mode.as_deref() == Some("Block") {
            let note = format!(
                "failed to provision volume with StorageClass \"{}\": volumeMode Block is not supported by {PROVISIONER}",
                sc.name_any()
            );
            self.event_once(c, true, "ProvisioningFailed", note).await;
            return Ok(());
        }
        let hostname = self
            .nodes
            .get(&ObjectRef::new(&node))
            .and_then(|n| n.labels().get(HOSTNAME_LABEL).cloned())
            .unwrap_or_else(|| node.clone());
        let (name, dir) = provisioned_names(c);
        let path = self.storage_path.join(&dir);
        let storage = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned())
            .map(|q| q.0)
            .unwrap_or_else(|| "0".into());
        self.ctx
            .event(
                c,
                false,
                "Provisioning",
                format!(
                    "External provisioner is provisioning volume for claim \"{}/{}\"",
                    c.namespace().unwrap_or_default(),
                    c.name_any()
                ),
            )
            .await;
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER},
                "finalizers": [LOCAL_PATH_CLEANUP_FINALIZER]},
            "spec": {
                "capacity": {"storage": storage},
                "accessModes": spec.access_modes.clone().unwrap_or_default(),
                "persistentVolumeReclaimPolicy": sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
                "storageClassName": sc.name_any(),
                "mountOptions": sc.mount_options,
                "volumeMode": "Filesystem",
                "hostPath": {"path": path.to_string_lossy(), "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOSTNAME_LABEL, "operator": "In", "values": [hostname]}]}]}},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": c.namespace(), "name": c.name_any(), "uid": c.uid(),
                    "resourceVersion": c.resource_version()},
            },
        }))
        .map_err(kube::Error::SerdeError)?;
        let api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        match api.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                let note = format!("Successfully provisioned volume {name}");
                self.ctx
                    .event(c, false, "ProvisioningSucceeded", note)
                    .await;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => {
                let note = format!(
                    "failed to provision volume with StorageClass \"{}\": {e}",
                    sc.name_any()
                );
                self.event_once(c, true, "ProvisioningFailed", note).await;
                Err(e)
            }
        }
    }

    fn claims_api(&self, c: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.ctx.client.clone(), &c.namespace().unwrap_or_default())
    }

    /// Brings both sides of the binding of `v` and `c` to done, one write at a time, each
    /// only when needed (upstream's bind: volume, volume status, claim, claim status).
    async fn bind(&mut self, v: &PersistentVolume, c: &PersistentVolumeClaim) -> Result<()> {
        let volumes: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        let mut v = v.clone();
        let ref_complete = v
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid.as_deref() == c.uid().as_deref());
        if !ref_complete {
            let by_controller = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none();
            let spec = v.spec.get_or_insert_with(Default::default);
            spec.claim_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: c.namespace(),
                name: Some(c.name_any()),
                uid: c.uid(),
                resource_version: c.resource_version(),
                ..Default::default()
            });
            if by_controller {
                v.annotations_mut()
                    .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            v = volumes
                .replace(&v.name_any(), &PostParams::default(), &v)
                .await?;
        }
        if phase(&v) != "Bound" {
            let status = v.status.get_or_insert_with(Default::default);
            status.phase = Some("Bound".into());
            status.message = None;
            status.reason = None;
            volumes
                .replace_status(&v.name_any(), &PostParams::default(), &v)
                .await?;
        }
        let claims = self.claims_api(c);
        let mut c = c.clone();
        let pv_name = v.name_any();
        let has_name = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(&pv_name);
        if !has_name || !c.annotations().contains_key(BIND_COMPLETED) {
            if !has_name {
                c.spec.get_or_insert_with(Default::default).volume_name = Some(pv_name.clone());
                c.annotations_mut()
                    .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            c.annotations_mut()
                .insert(BIND_COMPLETED.into(), "yes".into());
            c = claims
                .replace(&c.name_any(), &PostParams::default(), &c)
                .await?;
        }
        let vspec = v.spec.clone().unwrap_or_default();
        let status = c.status.clone().unwrap_or_default();
        if status.phase.as_deref() != Some("Bound")
            || status.capacity != vspec.capacity
            || status.access_modes != vspec.access_modes
        {
            let st = c.status.get_or_insert_with(Default::default);
            st.phase = Some("Bound".into());
            st.capacity = vspec.capacity.clone();
            st.access_modes = vspec.access_modes.clone();
            claims
                .replace_status(&c.name_any(), &PostParams::default(), &c)
                .await?;
        }
        Ok(())
    }

    async fn claim_phase(&self, c: &PersistentVolumeClaim, phase: &str) -> Result<()> {
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
            return Ok(());
        }
        let mut c = c.clone();
        c.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self.claims_api(&c)
            .replace_status(&c.name_any(), &PostParams::default(), &c)
            .await
            .map(|_| ())
    }

    async fn volume_phase(
        &self,
        v: &PersistentVolume,
        phase: &str,
        message: Option<String>,
    ) -> Result<()> {
        let status = v.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some(phase) && status.message == message {
            return Ok(());
        }
        let mut v = v.clone();
        let st = v.status.get_or_insert_with(Default::default);
        st.phase = Some(phase.into());
        st.message = message;
        Api::<PersistentVolume>::all(self.ctx.client.clone())
            .replace_status(&v.name_any(), &PostParams::default(), &v)
            .await
            .map(|_| ())
    }

    async fn sync_volume(&mut self, v: &PersistentVolume) -> Result<()> {
        if v.metadata.deletion_timestamp.is_some() {
            if reclaim_policy(v) != "Delete" && has_cleanup_finalizer(v) {
                // Deleted by hand while its policy keeps the data: the node keeps the
                // directory, and the volume goes without it.
                let mut v = v.clone();
                v.finalizers_mut()
                    .retain(|f| f != LOCAL_PATH_CLEANUP_FINALIZER);
                return Api::<PersistentVolume>::all(self.ctx.client.clone())
                    .replace(&v.name_any(), &PostParams::default(), &v)
                    .await
                    .map(|_| ());
            }
            return self.unprotect_volume(v).await;
        }
        let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            return self.volume_phase(v, "Available", None).await;
        };
        if r.uid.as_deref().is_none_or(str::is_empty) {
            // Pre-bound to a claim by name that has not bound yet.
            return self.volume_phase(v, "Available", None).await;
        }
        let (ns, name) = (
            r.namespace.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        );
        let cached = self.claims.get(&ObjectRef::new(&name).within(&ns));
        let claim = match cached {
            Some(c) => Some(c),
            // The cache may be behind: only the API server may say the claim is gone.
            None => Api::<PersistentVolumeClaim>::namespaced(self.ctx.client.clone(), &ns)
                .get_opt(&name)
                .await?
                .map(Arc::new),
        };
        match claim {
            Some(c) if c.uid() == r.uid => {
                let claims_it =
                    c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(&v.name_any());
                if claims_it {
                    self.volume_phase(v, "Bound", None).await
                } else {
                    // Provisioned or matched for the claim, which binds on its own sync.
                    Ok(())
                }
            }
            _ => self.reclaim(v).await,
        }
    }

    /// Lets a claim being deleted go once no pod uses it: the cache first, then the API
    /// server, which the cache may be behind (upstream asks it likewise).
    async fn unprotect_claim(&self, c: &PersistentVolumeClaim) -> Result<()> {
        if !c.finalizers().iter().any(|f| f == PVC_PROTECTION) {
            return Ok(());
        }
        let ns = c.namespace().unwrap_or_default();
        if self
            .pods
            .state()
            .iter()
            .any(|p| uses_claim(p, &ns, &c.name_any()))
        {
            return Ok(());
        }
        let client = &self.protection.claims;
        let live = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        if live.items.iter().any(|p| uses_claim(p, &ns, &c.name_any())) {
            return Ok(());
        }
        let mut c = c.clone();
        c.metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .retain(|f| f != PVC_PROTECTION);
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .replace(&c.name_any(), &PostParams::default(), &c)
            .await
            .map(|_| ())
    }

    /// Lets a volume being deleted go once it is not Bound.
    async fn unprotect_volume(&self, v: &PersistentVolume) -> Result<()> {
        if !v.finalizers().iter().any(|f| f == PV_PROTECTION) || phase(v) == "Bound" {
            return Ok(());
        }
        let mut v = v.clone();
        v.metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .retain(|f| f != PV_PROTECTION);
        Api::<PersistentVolume>::all(self.protection.volumes.clone())
            .replace(&v.name_any(), &PostParams::default(), &v)
            .await
            .map(|_| ())
    }

    /// The claim of `v` is gone: Released, then its reclaim policy.
    async fn reclaim(&mut self, v: &PersistentVolume) -> Result<()> {
        let policy = reclaim_policy(v);
        if phase(v) != "Released" && phase(v) != "Failed" {
            self.volume_phase(v, "Released", None).await?;
            if policy == "Retain" {
                return Ok(());
            }
        }
        match policy {
            "Delete"
                if v.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER) =>
            {
                // The kubelet of the volume's node removes the directory, then the finalizer.
                // A volume made before the finalizer existed gets it first.
                let api = Api::<PersistentVolume>::all(self.ctx.client.clone());
                if !has_cleanup_finalizer(v) {
                    let mut v = v.clone();
                    v.finalizers_mut().push(LOCAL_PATH_CLEANUP_FINALIZER.into());
                    api.replace(&v.name_any(), &PostParams::default(), &v)
                        .await?;
                }
                match api.delete(&v.name_any(), &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
            "Delete" => {
                let msg = format!(
                    "error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched",
                    v.name_any()
                );
                self.event_once(v, true, "VolumeFailedDelete", msg.clone())
                    .await;
                self.volume_phase(v, "Failed", Some(msg)).await
            }
            "Recycle" => {
                let msg = "No recycler plugin found for the volume!".to_string();
                self.event_once(v, true, "VolumeFailedRecycle", msg.clone())
                    .await;
                self.volume_phase(v, "Failed", Some(msg)).await
            }
            _ => Ok(()),
        }
    }
}

/// A volume's reclaim policy (`Retain` when unset, as for volumes made by hand).
fn reclaim_policy(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

fn has_cleanup_finalizer(v: &PersistentVolume) -> bool {
    v.finalizers()
        .iter()
        .any(|f| f == LOCAL_PATH_CLEANUP_FINALIZER)
}

/// Whether pod `p` of namespace `ns`, not terminated, uses claim `claim` (directly or as a
/// generic ephemeral volume's `<pod>-<volume>` claim).
fn uses_claim(p: &Pod, ns: &str, claim: &str) -> bool {
    p.namespace().as_deref() == Some(ns)
        && !kinglet_core::pods::is_terminal(p)
        && p.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim)
                    || (v.ephemeral.is_some() && format!("{}-{}", p.name_any(), v.name) == claim)
            })
}

/// The clients of the protection controllers (`pvc-protection-controller`,
/// `pv-protection-controller`).
pub struct Protection {
    pub claims: kube::Client,
    pub volumes: kube::Client,
}

/// Aborts the caches' tasks when the controller stops (leadership lost).
struct Tasks(Vec<tokio::task::JoinHandle<()>>);
impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs the binder and the protection controllers. `reader` lists and watches (the controller
/// manager's shared-informer identity); `ctx` writes as persistent-volume-binder.
/// `storage_path` is where provisioned volumes live on every node
/// (`--default-local-storage-path`).
pub async fn run(
    ctx: Arc<Context>,
    protection: Protection,
    reader: kube::Client,
    informers: Arc<super::informers::Informers>,
    storage_path: PathBuf,
) {
    let (claims, a) = Shared::<PersistentVolumeClaim>::start_with(&reader, MEDIUM_BUFFER);
    let (volumes, b) = Shared::<PersistentVolume>::start_with(&reader, MEDIUM_BUFFER);
    let (classes, c) = Shared::<StorageClass>::start_with(&reader, MEDIUM_BUFFER);
    let wake = Arc::new(tokio::sync::Notify::new());
    let _tasks = Tasks(vec![
        a,
        b,
        c,
        claims.wake_on_change(wake.clone()),
        volumes.wake_on_change(wake.clone()),
        classes.wake_on_change(wake.clone()),
        // A pod that goes may free a claim being deleted.
        informers.pods.wake_on_change(wake.clone()),
    ]);
    claims.synced().await;
    volumes.synced().await;
    classes.synced().await;
    informers.pods.synced().await;
    let mut binder = Binder {
        ctx,
        claims: claims.store(),
        volumes: volumes.store(),
        classes: classes.store(),
        nodes: informers.nodes.store(),
        pods: informers.pods.store(),
        protection,
        storage_path,
        told: HashSet::new(),
    };
    loop {
        binder.sync_all().await;
        // Changes that come while syncing wake the next pass at once (Notify keeps a permit).
        let _ = tokio::time::timeout(RESYNC, wake.notified()).await;
        // Let a burst of changes (a write and its status) settle into one pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
// Case tables are tuples, one line per case.
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn pv(name: &str, spec: serde_json::Value, phase: &str) -> PersistentVolume {
        let mut base = json!({"storageClassName": "manual", "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem", "hostPath": {"path": "/x"}});
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": name}},
            "spec": base, "status": {"phase": phase}}))
        .unwrap()
    }

    fn claim(spec: serde_json::Value) -> PersistentVolumeClaim {
        let mut base = json!({"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem", "resources": {"requests": {"storage": "500Mi"}}});
        let mut name = "c";
        for (k, v) in spec.as_object().unwrap() {
            match k.as_str() {
                // The claim's name rather than a spec field.
                "name" => name = v.as_str().unwrap(),
                _ => base[k] = v.clone(),
            }
        }
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "ns1", "uid": "u1"}, "spec": base}),
        )
        .unwrap()
    }

    fn on(node: &str) -> serde_json::Value {
        json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}})
    }

    /// Each case: the claim's spec (over a 500Mi RWO claim of class manual), the node it was
    /// given (if any), whether its class delays binding, and the volume chosen.
    #[test]
    fn claims_get_the_smallest_volume_that_fits() {
        let volumes = vec![
            pv(
                "big",
                json!({"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"]}),
                "Available",
            ),
            pv("small", json!({}), "Available"),
            pv(
                "tiny",
                json!({"capacity": {"storage": "100Mi"}}),
                "Available",
            ),
            pv(
                "other-class",
                json!({"storageClassName": "fast"}),
                "Available",
            ),
            pv(
                "taken",
                json!({"claimRef": {"namespace": "ns1", "name": "x", "uid": "ux"}}),
                "Bound",
            ),
            pv(
                "on-a",
                json!({"storageClassName": "local", "nodeAffinity": on("a")}),
                "Available",
            ),
            pv(
                "block",
                json!({"storageClassName": "raw", "volumeMode": "Block"}),
                "Available",
            ),
            pv(
                "for-c",
                json!({"storageClassName": "pre", "capacity": {"storage": "2Gi"}, "claimRef": {"namespace": "ns1", "name": "pre"}}),
                "Available",
            ),
            pv(
                "for-c-small",
                json!({"storageClassName": "pre", "capacity": {"storage": "1Gi"}}),
                "Available",
            ),
        ];
        let labels =
            |n: &str| BTreeMap::from([("kubernetes.io/hostname".to_string(), n.to_string())]);
        let (la, lb) = (labels("a"), labels("b"));
        let cases: Vec<(
            &str,
            serde_json::Value,
            Option<(&str, &BTreeMap<String, String>)>,
            bool,
            Option<&str>,
        )> = vec![
            (
                "smallest large enough",
                json!({}),
                None,
                false,
                Some("small"),
            ),
            (
                "access mode",
                json!({"accessModes": ["ReadWriteMany"]}),
                None,
                false,
                Some("big"),
            ),
            (
                "too large",
                json!({"resources": {"requests": {"storage": "20Gi"}}}),
                None,
                false,
                None,
            ),
            (
                "class",
                json!({"storageClassName": "fast"}),
                None,
                false,
                Some("other-class"),
            ),
            (
                "no such class",
                json!({"storageClassName": "none"}),
                None,
                false,
                None,
            ),
            (
                "selector",
                json!({"selector": {"matchLabels": {"tier": "big"}}}),
                None,
                false,
                Some("big"),
            ),
            (
                "empty selector",
                json!({"selector": {}}),
                None,
                false,
                Some("small"),
            ),
            (
                "delayed without node",
                json!({"storageClassName": "local"}),
                None,
                true,
                None,
            ),
            (
                "delayed on its node",
                json!({"storageClassName": "local"}),
                Some(("a", &la)),
                true,
                Some("on-a"),
            ),
            (
                "delayed on another node",
                json!({"storageClassName": "local"}),
                Some(("b", &lb)),
                true,
                None,
            ),
            (
                "volume mode",
                json!({"storageClassName": "raw"}),
                None,
                false,
                None,
            ),
            (
                "block claim",
                json!({"storageClassName": "raw", "volumeMode": "Block"}),
                None,
                false,
                Some("block"),
            ),
            (
                "pre-bound first",
                json!({"storageClassName": "pre", "name": "pre"}),
                None,
                false,
                Some("for-c"),
            ),
            (
                "pre-bound to another",
                json!({"storageClassName": "pre"}),
                None,
                false,
                Some("for-c-small"),
            ),
        ];
        let mut failures = Vec::new();
        for (case, spec, node, delayed, want) in cases {
            let got = find_match(&claim(spec), &volumes, node, delayed).map(|v| v.name_any());
            if got.as_deref() != want {
                failures.push(format!("{case}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A claim naming a volume in `spec.volumeName` binds only if the volume satisfies it.
    #[test]
    fn a_claim_naming_a_volume_binds_only_a_fitting_one() {
        let mut deleting = pv("deleting", json!({}), "Available");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let cases = [
            (pv("fits", json!({}), "Available"), None),
            (
                pv("class", json!({"storageClassName": "fast"}), "Available"),
                Some("storageClassName does not match"),
            ),
            (
                pv(
                    "small",
                    json!({"capacity": {"storage": "100Mi"}}),
                    "Available",
                ),
                Some("requested PV is too small"),
            ),
            (
                pv(
                    "modes",
                    json!({"accessModes": ["ReadOnlyMany"]}),
                    "Available",
                ),
                Some("incompatible accessMode"),
            ),
            (
                pv("block", json!({"volumeMode": "Block"}), "Available"),
                Some("incompatible volumeMode"),
            ),
            (deleting, Some("volume is being deleted")),
        ];
        for (v, want) in cases {
            assert_eq!(
                claim_mismatch(&claim(json!({})), &v),
                want,
                "{}",
                v.name_any()
            );
        }
    }

    #[test]
    fn the_newest_default_class_is_the_default() {
        let class = |name: &str, default: Option<&str>, created: &str| {
            let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}, "provisioner": "p"});
            if let Some(d) = default {
                c["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: d});
            }
            Arc::new(serde_json::from_value::<StorageClass>(c).unwrap())
        };
        let classes = vec![
            class("old", Some("true"), "2024-01-01T00:00:00Z"),
            class("new", Some("true"), "2025-01-01T00:00:00Z"),
            class("newest-not-default", Some("false"), "2026-01-01T00:00:00Z"),
            class("plain", None, "2026-01-01T00:00:00Z"),
        ];
        assert_eq!(
            default_class(&classes).map(|c| c.name_any()).as_deref(),
            Some("new")
        );
        assert!(default_class(&classes[2..]).is_none());
    }

    #[test]
    fn provisioned_volumes_are_named_after_their_claim() {
        let (pv, dir) = provisioned_names(&claim(json!({})));
        assert_eq!((pv.as_str(), dir.as_str()), ("pvc-u1", "pvc-u1_ns1_c"));
    }
}
