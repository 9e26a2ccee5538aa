//! Pod Security admission (built into upstream and k3s): the namespace's
//! `pod-security.kubernetes.io/*` labels decide which pods are refused, and which pods and
//! workload templates are warned about. The checks are `kinglet_podsecurity`'s.

use serde_json::Value;

use super::super::Api;
use super::super::context::Ctx;
use super::super::registry::Resource;
use super::super::status::{ApiError, ApiResult, Cause};

pub async fn admit(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    obj: &Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let sub = ctx.path.subresource.as_deref().unwrap_or("");
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if res.group.is_empty() && res.plural == "namespaces" {
        let pods = match old {
            Some(old) if enforce_label(old) != enforce_label(obj) => pods_in(api, name).await,
            _ => Ok(Vec::new()),
        };
        let d = kinglet_podsecurity::admit_namespace(sub, obj, old, || pods);
        if !d.invalid.is_empty() {
            let causes = d
                .invalid
                .iter()
                .map(|e| Cause::new("FieldValueInvalid", e.field(), e.message()))
                .collect();
            return Err(ApiError::invalid("", "Namespace", name, causes));
        }
        for w in d.warnings {
            ctx.warn(w);
        }
        return Ok(());
    }
    let is_pod = res.group.is_empty() && res.plural == "pods";
    if !is_pod && kinglet_podsecurity::pod_template(&res.group, &res.plural, obj).is_none() {
        return Ok(());
    }
    let Some(ns) = ctx.path.namespace.as_deref() else {
        return Ok(());
    };
    let namespace = namespace(api, ns).await?;
    let d = if is_pod {
        kinglet_podsecurity::admit_pod(&namespace, sub, obj, old)
    } else {
        kinglet_podsecurity::admit_pod_controller(&namespace, &res.group, &res.plural, sub, obj)
    };
    if let Some(msg) = d.denied {
        let mut e = ApiError::forbidden(msg);
        e.details = Some(serde_json::json!({"name": name, "kind": "pods"}));
        return Err(e);
    }
    for w in d.warnings {
        ctx.warn(w);
    }
    Ok(())
}

fn enforce_label(ns: &Value) -> Option<&Value> {
    ns.pointer("/metadata/labels/pod-security.kubernetes.io~1enforce")
}

async fn namespace(api: &Api, ns: &str) -> ApiResult<Value> {
    let failed = || ApiError::internal(format!("failed to lookup namespace {ns:?}"));
    let res = api
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(failed)?;
    match api.store.get(&res.key(None, ns)).await {
        Ok(Some(rec)) => serde_json::from_slice(&rec.value).map_err(|_| failed()),
        // A missing namespace is the namespace lifecycle's error to give.
        Ok(None) => Ok(Value::Null),
        Err(_) => Err(failed()),
    }
}

async fn pods_in(api: &Api, ns: &str) -> Result<Vec<Value>, String> {
    let res = api
        .registry
        .find("", "v1", "pods")
        .ok_or_else(|| "pods not registered".to_string())?;
    let list = api
        .store
        .list(&res.ns_prefix(Some(ns)), 0, None, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect())
}
