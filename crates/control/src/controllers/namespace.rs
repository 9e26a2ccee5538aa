//! Namespace controller: a namespace being deleted loses every object in it, then its
//! `kubernetes` finalizer, and so goes away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use kinglet_apiserver::Api;
use kinglet_apiserver::lifecycle::{DeleteOptions, commit_update, delete_object, get_current};
use kinglet_core::object::{self, is_deleting};

pub async fn run_forever(api: Arc<Api>) {
    loop {
        if let Err(e) = run(&api).await {
            tracing::warn!("namespace controller restarting: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(api: &Arc<Api>) -> anyhow::Result<()> {
    let ns_res = api
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(|| anyhow::anyhow!("namespaces not registered"))?;
    let mut watch = api
        .store
        .watch(&ns_res.prefix(), api.store.current_rev())
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let page = api.store.list(&ns_res.prefix(), 0, None, None).await?;
        for rec in page.items {
            let ns: Value = serde_json::from_slice(&rec.value)?;
            if is_deleting(&ns)
                && let Err(e) = finalize(api, object::name(&ns)).await
            {
                tracing::debug!("namespace {}: {e}", object::name(&ns));
            }
        }
        tokio::select! {
            ev = watch.next() => { ev.map_err(|e| anyhow::anyhow!("watch ended: {e:?}"))?; }
            _ = tick.tick() => {}
        }
    }
}

/// Deletes what is left in `ns`; once nothing is, removes the `kubernetes` finalizer.
async fn finalize(api: &Api, ns: &str) -> anyhow::Result<()> {
    let mut remaining = 0;
    let mut seen = std::collections::HashSet::new();
    for res in api
        .registry
        .all()
        .into_iter()
        .filter(|r| r.namespaced && !r.create_only && r.storage.0 == r.group)
    {
        if !seen.insert(res.prefix()) {
            continue;
        }
        let page = api
            .store
            .list(&res.ns_prefix(Some(ns)), 0, None, None)
            .await?;
        let ctx = crate::identity::store_writer(&res.group, &res.version, &res.plural, Some(ns));
        for rec in page.items {
            remaining += 1;
            let obj: Value = serde_json::from_slice(&rec.value)?;
            if !is_deleting(&obj) {
                let opts = DeleteOptions {
                    propagation: Some("Background".into()),
                    ..Default::default()
                };
                let _ = delete_object(api, &res, &ctx, object::name(&obj), &opts).await;
            }
        }
    }
    if remaining > 0 {
        return Ok(());
    }
    let ns_res = api
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(|| anyhow::anyhow!("namespaces not registered"))?;
    let ctx = crate::identity::store_writer("", "v1", "namespaces", None);
    let (rec, obj) = get_current(api, &ns_res, &ctx, ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut new = obj.clone();
    if let Some(f) = new
        .pointer_mut("/spec/finalizers")
        .and_then(Value::as_array_mut)
    {
        f.retain(|f| f.as_str() != Some("kubernetes"));
    }
    commit_update(api, &ns_res, &ctx, rec.rev, &obj, new, Some("finalize"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
