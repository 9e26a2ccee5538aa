//! PersistentVolumes and PersistentVolumeClaims: defaults, the initial Pending phase and their
//! `kubectl get` columns.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{KindBehaviour, strip_status};
use crate::Api;
use crate::admission::defaults::{default, obj_at};
use crate::registry::Resource;
use crate::status::ApiResult;
use crate::table::{AGE, Columns, N, age, arr, name, s};

pub struct PersistentVolumeClaims;

impl KindBehaviour for PersistentVolumeClaims {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "volumeMode", json!("Filesystem"));
        }
    }

    /// Upstream's DefaultStorageClass admission: a new claim that names no class (absent, not
    /// `""`) gets the default one; and StorageObjectInUseProtection's finalizer.
    fn admit<'a>(
        &'a self,
        api: &'a Api,
        _res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let unset = obj
                .pointer("/spec/storageClassName")
                .is_none_or(Value::is_null);
            if old.is_none()
                && unset
                && let Some(class) = default_class(api).await
                && let Some(spec) = obj_at(obj, "spec")
            {
                spec["storageClassName"] = json!(class);
            }
            if old.is_none() {
                protect(obj, "kubernetes.io/pvc-protection");
            }
            Ok(())
        })
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("StorageClass", "string", 0),
                AGE,
            ],
            |v| {
                let modes: Vec<&str> = arr(v, "/status/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(access_mode)
                    .collect();
                vec![
                    name(v),
                    json!(s(v, "/status/phase")),
                    json!(s(v, "/spec/volumeName")),
                    json!(s(v, "/status/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(v, "/spec/storageClassName")),
                    age(v),
                ]
            },
        );
        Some(columns)
    }

    fn prepare_for_create(&self, res: &Resource, obj: &mut Value) {
        pending(res, obj);
    }
}

pub struct PersistentVolumes;

impl KindBehaviour for PersistentVolumes {
    /// StorageObjectInUseProtection: a volume is deleted only once no claim is bound to it
    /// (the pv-protection controller removes the finalizer).
    fn admit<'a>(
        &'a self,
        _api: &'a Api,
        _res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        if old.is_none() {
            protect(obj, "kubernetes.io/pv-protection");
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("Reclaim Policy", "string", 0),
                ("Status", "string", 0),
                ("Claim", "string", 0),
                ("StorageClass", "string", 0),
                ("Reason", "string", 0),
                AGE,
            ],
            |v| {
                let modes: Vec<&str> = arr(v, "/spec/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(access_mode)
                    .collect();
                let claim = if s(v, "/spec/claimRef/name").is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}/{}",
                        s(v, "/spec/claimRef/namespace"),
                        s(v, "/spec/claimRef/name")
                    )
                };
                vec![
                    name(v),
                    json!(s(v, "/spec/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(v, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(v, "/status/phase")),
                    json!(claim),
                    json!(s(v, "/spec/storageClassName")),
                    json!(s(v, "/status/reason")),
                    age(v),
                ]
            },
        );
        Some(columns)
    }

    fn prepare_for_create(&self, res: &Resource, obj: &mut Value) {
        pending(res, obj);
    }
}

/// Adds `finalizer` to a new object (upstream's StorageObjectInUseProtection admission).
fn protect(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj_at(obj, "metadata") else {
        return;
    };
    if !meta.get("finalizers").is_some_and(Value::is_array) {
        meta["finalizers"] = json!([]);
    }
    if let Some(list) = meta["finalizers"].as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
}

/// A new volume or claim starts Pending, whatever status the client sent.
fn pending(res: &Resource, obj: &mut Value) {
    strip_status(res, obj);
    obj["status"] = json!({"phase": "Pending"});
}

fn access_mode(m: &str) -> &str {
    match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        other => other,
    }
}

/// The name of the default StorageClass: of those annotated default, the newest (upstream's
/// choice since 1.26 when there are several).
async fn default_class(api: &Api) -> Option<String> {
    let res = api
        .registry
        .find("storage.k8s.io", "v1", "storageclasses")?;
    let list = api
        .store
        .list(&res.ns_prefix(None), 0, None, None)
        .await
        .ok()?;
    let is_default = |c: &Value| {
        [
            "storageclass.kubernetes.io/is-default-class",
            "storageclass.beta.kubernetes.io/is-default-class",
        ]
        .iter()
        .any(|a| {
            c.pointer("/metadata/annotations")
                .and_then(|m| m.get(a))
                .and_then(Value::as_str)
                == Some("true")
        })
    };
    list.items
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .filter(is_default)
        .max_by_key(|c| {
            (
                s(c, "/metadata/creationTimestamp").to_string(),
                s(c, "/metadata/name").to_string(),
            )
        })
        .map(|c| s(&c, "/metadata/name").to_string())
}
