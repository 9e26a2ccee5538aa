//! Storage key layout over time. Releases before issue 23 kept every object under
//! `/registry/<group or "core">/<plural>/`; keys are now upstream's (see
//! [`Resource::prefix`](crate::registry::Resource::prefix)), so that `etcdctl get --prefix
//! /registry` reads as it does under kube-apiserver. [`migrate`] moves a datastore written by an
//! earlier release once, at API server start, before anything reads it.
//!
//! Custom resources, CRDs and APIServices were already at `/registry/<group>/<plural>/`, so only
//! kube-apiserver's own resources move. Old prefixes cannot hold new keys: the old group
//! segment is `core`, a group without a dot that no resource is named after (`apps`, `batch`,
//! `policy`, `autoscaling`), or a `*.k8s.io` group that no built-in plural matches.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kinglet_store::{Store, StoreError};
use tokio::sync::Notify;

use crate::encryption::{Config, SECRETS_PREFIX, Storage};
use crate::registry::{Resource, builtins};

/// How many keys move at once (the store commits concurrent writes together).
const PARALLEL_MOVES: usize = 64;
const PAGE: usize = 500;

/// Where the previous layout kept the objects of `res`.
fn legacy_prefix(res: &Resource) -> String {
    let group = if res.storage.0.is_empty() {
        "core"
    } else {
        &res.storage.0
    };
    format!("/registry/{group}/{}/", res.storage.1)
}

/// Each stored resource's (old prefix, new prefix), where they differ, once per storage.
fn moves() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for res in builtins().iter().filter(|r| !r.computed && !r.create_only) {
        let (old, new) = (legacy_prefix(res), res.prefix());
        if old != new && !out.iter().any(|(o, _)| *o == old) {
            out.push((old, new));
        }
    }
    out
}

/// Moves every object at a key of the previous layout to its upstream key, with the same
/// value (Secrets encrypted at rest are decrypted and sealed again, since AES-GCM binds a value
/// to its key). Safe to run again, and after an interrupted run: when both keys exist the new
/// one is kept. A sealed Secret that the encryption configuration cannot open stays where it is
/// (logged), so that a configuration with the right key can still move it later.
/// Returns how many objects moved.
pub async fn migrate(storage: &Storage) -> anyhow::Result<usize> {
    let store = storage.raw();
    let encryption = storage.encryption();
    let mut moved = 0;
    for (old_prefix, new_prefix) in moves() {
        let mut after = None;
        loop {
            let page = store.list(&old_prefix, 0, after.take(), Some(PAGE)).await?;
            after = page.items.last().map(|r| r.key.clone());
            let results: Vec<anyhow::Result<bool>> =
                futures::stream::iter(page.items.into_iter().filter_map(|rec| {
                    let new_key = format!("{new_prefix}{}", rec.key.strip_prefix(&old_prefix)?);
                    Some(move_key(store, encryption, rec.key, new_key, rec.value))
                }))
                .buffer_unordered(PARALLEL_MOVES)
                .collect()
                .await;
            for r in results {
                moved += usize::from(r?);
            }
            if !page.more {
                break;
            }
        }
    }
    if moved > 0 {
        tracing::info!("moved {moved} objects to upstream's storage key layout");
    }
    Ok(moved)
}

/// Moves one object; false when it had to stay.
async fn move_key(
    store: &Store,
    encryption: Option<&Config>,
    old: String,
    new: String,
    value: Bytes,
) -> anyhow::Result<bool> {
    let value = if new.starts_with(SECRETS_PREFIX) && value.starts_with(b"k8s:enc:") {
        let Some(config) = encryption else {
            tracing::warn!(
                "{old} is encrypted and there is no encryption configuration: left in place"
            );
            return Ok(false);
        };
        match config.decrypt(&old, &value) {
            Ok(plain) => config.encrypt(&new, &plain)?,
            Err(e) => {
                tracing::warn!("{e}: left in place");
                return Ok(false);
            }
        }
    } else {
        value
    };
    match store.create(&new, value).await {
        Ok(_) | Err(StoreError::AlreadyExists) => {}
        Err(e) => anyhow::bail!("moving {old} to {new}: {e}"),
    }
    match store.delete(&old, None).await {
        Ok(_) | Err(StoreError::NotFound) => Ok(true),
        Err(e) => anyhow::bail!("removing {old} after moving it to {new}: {e}"),
    }
}

/// A signal raised on every change under any of `prefixes` after revision `from`, for readers
/// of several resources (RBAC's four, the two webhook configurations) that reload them all on
/// any change. A watch that ends (fallen behind, compacted) is opened again and the signal
/// raised, since changes may have been missed. The watches stop once the signal is dropped and
/// the next change arrives.
pub fn watch_prefixes(storage: &Storage, prefixes: Vec<String>, from: i64) -> Arc<Notify> {
    let changed = Arc::new(Notify::new());
    for prefix in prefixes {
        let storage = storage.clone();
        let changed: Weak<Notify> = Arc::downgrade(&changed);
        tokio::spawn(async move {
            let mut from = from;
            loop {
                if let Ok(mut w) = storage.watch(&prefix, from).await {
                    while w.next().await.is_ok() {
                        let Some(c) = changed.upgrade() else { return };
                        c.notify_one();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                from = storage.current_rev();
                let Some(c) = changed.upgrade() else { return };
                c.notify_one();
            }
        });
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::{AesGcmKey, Provider};

    async fn all_keys(store: &Store) -> Vec<(String, Bytes)> {
        store
            .list("/", 0, None, None)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| (r.key, r.value))
            .collect()
    }

    fn sealed_config() -> Config {
        Config {
            providers: vec![
                Provider::AesGcm(vec![AesGcmKey::generate("k1").unwrap()]),
                Provider::Identity,
            ],
        }
    }

    #[tokio::test]
    async fn old_keys_move_to_upstreams_layout_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let config = sealed_config();
        let sealed_old = "/registry/core/secrets/default/sealed";
        let sealed = config.encrypt(sealed_old, b"{\"secret\":1}").unwrap();
        let old: Vec<(&str, Bytes)> = vec![
            ("/registry/core/pods/default/web", "{\"pod\":1}".into()),
            ("/registry/core/nodes/n1", "{\"node\":1}".into()),
            (
                "/registry/core/services/default/kubernetes",
                "{\"svc\":1}".into(),
            ),
            (
                "/registry/core/endpoints/default/kubernetes",
                "{\"ep\":1}".into(),
            ),
            (
                "/registry/core/replicationcontrollers/ns/rc",
                "{\"rc\":1}".into(),
            ),
            ("/registry/core/events/default/e1", "{\"ev\":1}".into()),
            (
                "/registry/core/secrets/default/plain",
                "{\"plain\":1}".into(),
            ),
            (sealed_old, sealed),
            (
                "/registry/apps/deployments/default/d",
                "{\"deploy\":1}".into(),
            ),
            (
                "/registry/networking.k8s.io/ingresses/default/i",
                "{\"ing\":1}".into(),
            ),
            (
                "/registry/rbac.authorization.k8s.io/clusterroles/admin",
                "{\"cr\":1}".into(),
            ),
            (
                "/registry/coordination.k8s.io/leases/kube-node-lease/n1",
                "{\"l\":1}".into(),
            ),
        ];
        // Already at the same key in both layouts.
        let unchanged: Vec<(&str, Bytes)> = vec![
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
                "{\"crd\":1}".into(),
            ),
            (
                "/registry/apiregistration.k8s.io/apiservices/v1.apps",
                "{\"as\":1}".into(),
            ),
            (
                "/registry/example.com/widgets/default/w",
                "{\"w\":1}".into(),
            ),
            ("/kinglet/bootstrap/x", "{\"b\":1}".into()),
        ];
        for (k, v) in old.iter().chain(&unchanged) {
            store.create(k, v.clone()).await.unwrap();
        }
        // An interrupted run: the new key was written, the old one not yet removed.
        store
            .create("/registry/pods/default/web", "{\"pod\":1}".into())
            .await
            .unwrap();

        let storage = Storage::new(store.clone(), Some(config));
        assert_eq!(migrate(&storage).await.unwrap(), old.len());

        let mut expected: Vec<(String, Bytes)> = [
            ("/registry/pods/default/web", "{\"pod\":1}"),
            ("/registry/minions/n1", "{\"node\":1}"),
            ("/registry/services/specs/default/kubernetes", "{\"svc\":1}"),
            (
                "/registry/services/endpoints/default/kubernetes",
                "{\"ep\":1}",
            ),
            ("/registry/controllers/ns/rc", "{\"rc\":1}"),
            ("/registry/events/default/e1", "{\"ev\":1}"),
            ("/registry/secrets/default/plain", "{\"plain\":1}"),
            ("/registry/deployments/default/d", "{\"deploy\":1}"),
            ("/registry/ingress/default/i", "{\"ing\":1}"),
            ("/registry/clusterroles/admin", "{\"cr\":1}"),
            ("/registry/leases/kube-node-lease/n1", "{\"l\":1}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Bytes::from(v)))
        .chain(unchanged.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .collect();
        let sealed_new = "/registry/secrets/default/sealed";
        let mut stored = all_keys(&store).await;
        // The moved Secret is sealed again, for its new key.
        let (_, resealed) =
            stored.remove(stored.iter().position(|(k, _)| k == sealed_new).unwrap());
        assert!(resealed.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        let read = storage.get(sealed_new).await.unwrap().unwrap();
        assert_eq!(&read.value[..], b"{\"secret\":1}");
        expected.sort();
        assert_eq!(stored, expected);

        // A second run finds nothing to do and changes nothing.
        let rev = store.current_rev();
        assert_eq!(migrate(&storage).await.unwrap(), 0);
        assert_eq!(store.current_rev(), rev);
    }

    #[tokio::test]
    async fn an_unreadable_sealed_secret_stays_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let key = "/registry/core/secrets/ns/lost";
        let sealed = sealed_config().encrypt(key, b"{}").unwrap();
        store.create(key, sealed.clone()).await.unwrap();
        // Neither another key nor no configuration at all can open it.
        for config in [Some(sealed_config()), None] {
            let storage = Storage::new(store.clone(), config);
            assert_eq!(migrate(&storage).await.unwrap(), 0);
            let keys = all_keys(&store).await;
            assert_eq!(keys, vec![(key.to_string(), sealed.clone())]);
        }
    }
}
