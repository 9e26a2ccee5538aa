//! Garbage collector: follows `ownerReferences` across every resource. Dependents whose owners
//! are gone are deleted (background), `orphan` finalizers release dependents, and
//! `foregroundDeletion` owners wait for their blocking dependents before they go.
//!
//! It keeps an in-memory owner graph fed by a watch on the whole store, so cascades after a
//! restart (owners deleted while the server was down) are found by the initial listing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use kinglet_apiserver::Api;
use kinglet_apiserver::lifecycle::{DeleteOptions, commit_update, delete_object, get_current};
use kinglet_apiserver::registry::Resource;
use kinglet_core::object::{self, finalizers, is_deleting, meta_str};
use kinglet_store::EventType;

const ROOT: &str = "/registry/";

#[derive(Clone, Debug)]
struct OwnerRef {
    uid: String,
    api_version: String,
    kind: String,
    name: String,
    block: bool,
}

#[derive(Clone, Debug)]
struct Node {
    key: String,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerRef>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// owner uid -> dependent uids
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, uid: String, node: Node) {
        self.remove(&uid);
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.nodes.insert(uid, node);
    }
    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.nodes.remove(uid) {
            for o in old.owners {
                if let Some(set) = self.dependents.get_mut(&o.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&o.uid);
                    }
                }
            }
        }
    }
}

/// What the collector reads of a stored object: its metadata alone (the rest is parsed over,
/// not built: every event of every resource passes through here).
fn metadata_of(stored: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(default)]
        metadata: Value,
    }
    let stored: Stored = serde_json::from_slice(stored).ok()?;
    Some(serde_json::json!({ "metadata": stored.metadata }))
}

fn node_of(key: &str, obj: &Value) -> Option<(String, Node)> {
    let uid = meta_str(obj, "uid")?.to_string();
    let owners = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|o| OwnerRef {
                    uid: o.get("uid").and_then(Value::as_str).unwrap_or("").into(),
                    api_version: o
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    kind: o.get("kind").and_then(Value::as_str).unwrap_or("").into(),
                    name: o.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    block: o.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true),
                })
                .collect()
        })
        .unwrap_or_default();
    Some((
        uid,
        Node {
            key: key.to_string(),
            namespace: object::namespace(obj).map(String::from),
            name: object::name(obj).to_string(),
            owners,
            deleting: is_deleting(obj),
            finalizers: finalizers(obj),
        },
    ))
}

/// The storage prefixes of the resources the collector may act on, longest first, as of one
/// generation of the registry: found once, not per event.
#[derive(Default)]
struct Prefixes {
    generation: u64,
    by_length: Vec<(String, Arc<Resource>)>,
}

impl Prefixes {
    /// The resource an object's storage key belongs to.
    fn resource_for_key(&mut self, api: &Api, key: &str) -> Option<Arc<Resource>> {
        let generation = api.registry.generation();
        if generation != self.generation || self.by_length.is_empty() {
            self.by_length = api
                .registry
                .all()
                .into_iter()
                .filter(|r| !r.create_only && r.storage.0 == r.group)
                .map(|r| (r.prefix(), r))
                .collect();
            self.by_length
                .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            self.generation = generation;
        }
        self.by_length
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, r)| r.clone())
    }
}

fn ctx_for(res: &Resource, ns: Option<&str>) -> kinglet_apiserver::context::Ctx {
    crate::identity::store_writer(&res.group, &res.version, &res.plural, ns)
}

pub struct GarbageCollector {
    api: Arc<Api>,
    graph: Graph,
    prefixes: Prefixes,
}

impl GarbageCollector {
    pub async fn run_forever(api: Arc<Api>) {
        loop {
            let mut gc = GarbageCollector {
                api: api.clone(),
                graph: Graph::default(),
                prefixes: Prefixes::default(),
            };
            if let Err(e) = gc.run().await {
                tracing::warn!("garbage collector restarting: {e}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let page = self.api.store.list(ROOT, 0, None, None).await?;
        for rec in &page.items {
            if let Some(v) = metadata_of(&rec.value)
                && let Some((uid, node)) = node_of(&rec.key, &v)
            {
                self.graph.upsert(uid, node);
            }
        }
        let mut watch = self.api.store.watch(ROOT, page.rev).await?;
        let all: Vec<String> = self.graph.nodes.keys().cloned().collect();
        self.process(all).await;
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            let dirty = tokio::select! {
                ev = watch.next() => {
                    let ev = ev.map_err(|e| anyhow::anyhow!("watch ended: {e:?}"))?;
                    let Some(v) = metadata_of(&ev.record.value) else { continue };
                    let Some((uid, node)) = node_of(&ev.record.key, &v) else { continue };
                    // The object itself, its owners and its dependents may need work.
                    let mut dirty: Vec<String> = node.owners.iter().map(|o| o.uid.clone()).collect();
                    dirty.extend(self.graph.dependents.get(&uid).into_iter().flatten().cloned());
                    if ev.typ == EventType::Deleted {
                        self.graph.remove(&uid);
                    } else {
                        self.graph.upsert(uid.clone(), node);
                        dirty.push(uid);
                    }
                    dirty
                }
                _ = tick.tick() => self.graph.nodes.keys().cloned().collect(),
            };
            self.process(dirty).await;
        }
    }

    async fn process(&mut self, uids: Vec<String>) {
        for uid in uids {
            let Some(node) = self.graph.nodes.get(&uid).cloned() else {
                continue;
            };
            if let Err(e) = self.attend(&uid, &node).await {
                tracing::debug!(key = %node.key, "gc: {e}");
            }
        }
    }

    /// Whether an owner reference still names a live object.
    async fn owner_exists(&self, node: &Node, o: &OwnerRef) -> bool {
        if self
            .graph
            .nodes
            .get(&o.uid)
            .is_some_and(|n| n.name == o.name)
        {
            return true;
        }
        // Not in the graph: confirm with a direct read before acting on it.
        let (group, version) = o
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &o.api_version));
        let Some(res) = self.api.registry.all().into_iter().find(|r| {
            r.group == group && r.version == version && r.kind == o.kind && !r.create_only
        }) else {
            // An owner of an unknown kind can never be confirmed present; upstream treats it as absent.
            return false;
        };
        let ns = if res.namespaced {
            node.namespace.as_deref()
        } else {
            None
        };
        match get_current(&self.api, &res, &ctx_for(&res, ns), &o.name).await {
            Ok((_, obj)) => meta_str(&obj, "uid") == Some(&o.uid),
            Err(_) => false,
        }
    }

    async fn attend(&mut self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let res = self
            .prefixes
            .resource_for_key(&self.api, &node.key)
            .ok_or_else(|| anyhow::anyhow!("no resource for {}", node.key))?;
        let ctx = ctx_for(&res, node.namespace.as_deref());
        // 1. Dependents whose every owner is gone are collected.
        if !node.owners.is_empty() && !node.deleting {
            let mut any_alive = false;
            for o in &node.owners {
                if self.owner_exists(node, o).await {
                    any_alive = true;
                    break;
                }
            }
            if !any_alive {
                let opts = DeleteOptions {
                    uid: Some(uid.to_string()),
                    propagation: Some("Background".into()),
                    ..Default::default()
                };
                delete_object(&self.api, &res, &ctx, &node.name, &opts)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                return Ok(());
            }
        }
        if !node.deleting {
            return Ok(());
        }
        let deps: Vec<(String, Node)> = self
            .graph
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.graph.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect();
        // 2. Orphan: release dependents, then drop the finalizer.
        if node.finalizers.iter().any(|f| f == "orphan") {
            for (_, dep) in &deps {
                self.remove_owner_ref(dep, uid).await?;
            }
            return self.drop_finalizer(&res, &ctx, node, "orphan").await;
        }
        // 3. Foreground: delete dependents; go once no blocking dependent remains.
        if node.finalizers.iter().any(|f| f == "foregroundDeletion") {
            let mut blocked = false;
            for (dep_uid, dep) in &deps {
                let blocks = dep.owners.iter().any(|o| o.uid == uid && o.block);
                blocked |= blocks;
                if !dep.deleting
                    && let Some(dres) = self.prefixes.resource_for_key(&self.api, &dep.key)
                {
                    let dctx = ctx_for(&dres, dep.namespace.as_deref());
                    let opts = DeleteOptions {
                        uid: Some(dep_uid.clone()),
                        propagation: Some("Foreground".into()),
                        ..Default::default()
                    };
                    let _ = delete_object(&self.api, &dres, &dctx, &dep.name, &opts).await;
                }
            }
            if !blocked {
                return self
                    .drop_finalizer(&res, &ctx, node, "foregroundDeletion")
                    .await;
            }
        }
        Ok(())
    }

    async fn remove_owner_ref(&mut self, dep: &Node, owner_uid: &str) -> anyhow::Result<()> {
        let res = self
            .prefixes
            .resource_for_key(&self.api, &dep.key)
            .ok_or_else(|| anyhow::anyhow!("no resource"))?;
        let ctx = ctx_for(&res, dep.namespace.as_deref());
        for _ in 0..5 {
            let (rec, obj) = get_current(&self.api, &res, &ctx, &dep.name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut new = obj.clone();
            if let Some(refs) = new
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
                if refs.is_empty() {
                    object::meta_mut(&mut new).remove("ownerReferences");
                }
            }
            match commit_update(&self.api, &res, &ctx, rec.rev, &obj, new, None).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => continue,
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        Ok(())
    }

    async fn drop_finalizer(
        &self,
        res: &Resource,
        ctx: &kinglet_apiserver::context::Ctx,
        node: &Node,
        finalizer: &str,
    ) -> anyhow::Result<()> {
        for _ in 0..5 {
            let (rec, obj) = get_current(&self.api, res, ctx, &node.name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut new = obj.clone();
            object::set_finalizers(
                &mut new,
                finalizers(&obj)
                    .into_iter()
                    .filter(|f| f != finalizer)
                    .collect(),
            );
            match commit_update(&self.api, res, ctx, rec.rev, &obj, new, None).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => continue,
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_reads_the_same_node_from_the_metadata_alone() {
        let full = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "rs", "namespace": "ns", "uid": "u1",
                "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["f"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "d", "uid": "u0", "blockOwnerDeletion": true}]},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
            "status": {"replicas": 3}
        });
        let key = "/registry/replicasets/ns/rs";
        let meta = metadata_of(&serde_json::to_vec(&full).unwrap()).unwrap();
        assert_eq!(meta, serde_json::json!({"metadata": full["metadata"]}));
        let (uid, node) = node_of(key, &meta).unwrap();
        let (full_uid, full_node) = node_of(key, &full).unwrap();
        assert_eq!(uid, full_uid);
        assert_eq!(format!("{node:?}"), format!("{full_node:?}"));
        // A value that is not JSON (a Secret encrypted at rest) or has no metadata: no node.
        assert!(metadata_of(b"k8s:enc:aesgcm:v1:key1:\x00\x01").is_none());
        assert!(node_of(key, &metadata_of(b"{\"kind\":\"X\"}").unwrap()).is_none());
    }
}
