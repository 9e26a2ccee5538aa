//! Admission webhooks, as upstream's MutatingAdmissionWebhook and ValidatingAdmissionWebhook
//! plugins: the webhooks of Mutating/ValidatingWebhookConfigurations whose rules and selectors
//! match a write get an `admission.k8s.io/v1` AdmissionReview over HTTPS and answer with
//! allowed/denied, a JSONPatch (mutating) and warnings.
//!
//! Kept as upstream: mutating webhooks run in order (configuration name, then webhook order),
//! those with `reinvocationPolicy: IfNeeded` once more when a later webhook changed the object;
//! validating webhooks run after them (one by one; upstream runs them in parallel). A webhook
//! that cannot be called fails the request under `failurePolicy: Fail` (the default) and is
//! skipped under `Ignore`. Dry-run requests refuse webhooks with side effects. Webhook
//! configurations themselves are never sent to webhooks, so a broken webhook can be removed.
//!
//! `matchConditions` are CEL expressions evaluated with the `cel` crate (see `conditions`) after
//! the rules and selectors matched: any false skips the webhook; an evaluation error fails the
//! request under `failurePolicy: Fail` and skips the webhook under `Ignore`. Not supported:
//! `authorizer` in conditions (refused when the configuration is written), Kubernetes' own CEL
//! libraries (calls to them are evaluation errors) and a cost budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::Api;
use crate::context::Ctx;
use crate::convert;
use crate::lifecycle::get_current;
use crate::object;
use crate::registry::Resource;
use crate::selectors::LabelSelector;
use crate::service_backend::{self, ServiceRef};
use crate::status::{ApiError, ApiResult};
use kinglet_store::Store;

pub(crate) mod conditions;

const GROUP: &str = "admissionregistration.k8s.io";

/// Largest AdmissionReview answer read from a webhook.
const MAX_RESPONSE: usize = 3 * 1024 * 1024;

/// One webhook of a configuration, ready to call.
struct Hook {
    /// `<configuration>/<webhook>`: identifies it across reinvocation.
    id: String,
    name: String,
    mutating: bool,
    spec: Value,
    /// TLS settings from its caBundle (an error is reported when it is called).
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Its matchConditions, compiled once per configuration (an error is reported, under the
    /// failure policy, when they are evaluated).
    conditions: Result<Vec<conditions::Condition>, String>,
}

impl Hook {
    fn str(&self, field: &str) -> Option<&str> {
        self.spec.get(field).and_then(Value::as_str)
    }

    fn fails_open(&self) -> bool {
        self.str("failurePolicy") == Some("Ignore")
    }

    fn timeout(&self) -> Duration {
        let secs = self.spec["timeoutSeconds"]
            .as_u64()
            .unwrap_or(10)
            .clamp(1, 30);
        Duration::from_secs(secs)
    }
}

type Hooks = Arc<Vec<Arc<Hook>>>;

/// The webhooks of all configurations, kept current by a watch on the group's keys (as the
/// RBAC policy is, see `authz::start`).
pub(crate) struct Cache {
    hooks: RwLock<Hooks>,
    /// Cleared when the watching task ends (its runtime went away): the next request reloads.
    alive: Arc<AtomicBool>,
}

/// An API server's cache (its `webhooks`), started by the first write that needs it.
pub(crate) type CacheSlot = Mutex<Option<Arc<Cache>>>;

struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn config_resources(api: &Api) -> Vec<(bool, Arc<Resource>)> {
    [
        (true, "mutatingwebhookconfigurations"),
        (false, "validatingwebhookconfigurations"),
    ]
    .into_iter()
    .filter_map(|(m, plural)| Some((m, api.registry.find(GROUP, "v1", plural)?)))
    .collect()
}

async fn hooks(api: &Api) -> Hooks {
    let found = api
        .webhooks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|c| c.alive.load(Ordering::Relaxed));
    if let Some(c) = found {
        return c.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
    }
    let resources = config_resources(api);
    let from = api.store.current_rev();
    let loaded = load(&api.store, &resources).await;
    let cache = Arc::new(Cache {
        hooks: RwLock::new(loaded.clone()),
        alive: Arc::new(AtomicBool::new(true)),
    });
    {
        let mut slot = api.webhooks.lock().unwrap_or_else(|e| e.into_inner());
        // A concurrent first request may have started it meanwhile.
        if let Some(c) = slot.as_ref().filter(|c| c.alive.load(Ordering::Relaxed)) {
            return c.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
        }
        *slot = Some(cache.clone());
    }
    let store = api.store.clone();
    let guard = AliveGuard(cache.alive.clone());
    // Mutating and validating configurations are two key prefixes (`/registry/<plural>/`).
    let prefixes = resources.iter().map(|(_, res)| res.prefix()).collect();
    let changed = crate::layout::watch_prefixes(&store, prefixes, from);
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            changed.notified().await;
            let loaded = load(&store, &resources).await;
            *cache.hooks.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        }
    });
    loaded
}

/// Every webhook, mutating then validating, each sorted by configuration name.
async fn load(store: &Store, resources: &[(bool, Arc<Resource>)]) -> Hooks {
    let mut out = Vec::new();
    for (mutating, res) in resources {
        let Ok(page) = store.list(&res.prefix(), 0, None, None).await else {
            tracing::warn!("admission webhooks: listing {} failed", res.plural);
            continue;
        };
        let mut configs: Vec<Value> = page
            .items
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.value).ok())
            .collect();
        configs.sort_by(|a, b| object::name(a).cmp(object::name(b)));
        for c in &configs {
            for w in c["webhooks"].as_array().into_iter().flatten() {
                let name = w["name"].as_str().unwrap_or_default().to_string();
                out.push(Arc::new(Hook {
                    id: format!("{}/{name}", object::name(c)),
                    name,
                    mutating: *mutating,
                    tls: tls_config(w),
                    conditions: conditions::from_spec(w),
                    spec: w.clone(),
                }));
            }
        }
    }
    Arc::new(out)
}

/// Client TLS settings verifying the server with `clientConfig.caBundle`, or with the system's
/// trusted roots when there is none.
fn tls_config(w: &Value) -> Result<Arc<rustls::ClientConfig>, String> {
    let bundle = w
        .pointer("/clientConfig/caBundle")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty());
    let roots = match bundle {
        Some(b64) => Arc::new(service_backend::ca_bundle_roots(
            b64,
            "clientConfig.caBundle",
        )?),
        None => service_backend::system_roots(),
    };
    if roots.is_empty() {
        return Err("no clientConfig.caBundle and no trusted roots on this host".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What is being admitted.
pub struct Attrs<'a> {
    pub res: &'a Resource,
    pub ctx: &'a Ctx,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'static str,
    pub old: Option<&'a Value>,
}

impl Attrs<'_> {
    fn subresource(&self) -> &str {
        self.ctx.path.subresource.as_deref().unwrap_or("")
    }

    fn is_namespace(&self) -> bool {
        self.res.group.is_empty() && self.res.plural == "namespaces"
    }

    /// The request's namespace, as upstream's attributes have it: a Namespace's own name for
    /// requests about a Namespace.
    fn namespace(&self, obj: Option<&Value>) -> String {
        let from_obj = obj.or(self.old).map(|o| {
            if self.is_namespace() {
                object::name(o).to_string()
            } else {
                object::namespace(o).unwrap_or_default().to_string()
            }
        });
        self.ctx
            .path
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or(from_obj)
            .unwrap_or_default()
    }
}

/// Whether `res` is ever sent to webhooks: not the admission configuration objects themselves.
fn exempt(res: &Resource) -> bool {
    res.group == GROUP
}

fn list_has(v: &Value, field: &str, want: &str) -> bool {
    v[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|s| s == "*" || s == want)
}

/// Whether one of the webhook's rules covers `res` (upstream's rules.Matcher).
fn rule_matches(hook: &Value, a: &Attrs, res: &Resource, namespace: &str) -> bool {
    hook["rules"].as_array().into_iter().flatten().any(|r| {
        list_has(r, "operations", a.operation)
            && list_has(r, "apiGroups", &res.group)
            && list_has(r, "apiVersions", &res.version)
            && r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|want| {
                    let (plural, sub) = want.split_once('/').unwrap_or((want, ""));
                    (plural == "*" || plural == res.plural)
                        && (sub == "*" || sub == a.subresource())
                })
            && match r["scope"].as_str().unwrap_or("*") {
                "Namespaced" => !a.is_namespace() && !namespace.is_empty(),
                "Cluster" => a.is_namespace() || namespace.is_empty(),
                _ => true,
            }
    })
}

/// The resource the webhook is called as: the request's own when a rule covers it, else (with
/// `matchPolicy: Equivalent`, the default) another served version of the same objects.
fn matched_resource(
    api: &Api,
    hook: &Hook,
    a: &Attrs,
    namespace: &str,
) -> Option<Option<Arc<Resource>>> {
    if rule_matches(&hook.spec, a, a.res, namespace) {
        return Some(None);
    }
    if hook.str("matchPolicy") == Some("Exact") {
        return None;
    }
    api.registry
        .all()
        .into_iter()
        .filter(|r| {
            r.storage == a.res.storage
                && (r.group != a.res.group
                    || r.version != a.res.version
                    || r.plural != a.res.plural)
        })
        .find(|r| rule_matches(&hook.spec, a, r, namespace))
        .map(Some)
}

fn selector(hook: &Value, field: &str) -> Option<LabelSelector> {
    hook.get(field)
        .filter(|s| s.is_object())
        .and_then(|s| LabelSelector::from_object(s).ok())
        .filter(|s| !s.is_empty())
}

/// upstream's namespace matcher: cluster-scoped objects (but Namespaces) always match; a
/// Namespace is matched by its own labels.
async fn namespace_matches(
    api: &Api,
    hook: &Value,
    a: &Attrs<'_>,
    obj: Option<&Value>,
    namespace: &str,
) -> ApiResult<bool> {
    let Some(sel) = selector(hook, "namespaceSelector") else {
        return Ok(true);
    };
    if a.is_namespace() {
        let Some(ns) = obj.or(a.old) else {
            return Ok(true);
        };
        return Ok(sel.matches_object(ns));
    }
    if namespace.is_empty() {
        return Ok(true);
    }
    let Some(ns_res) = api.registry.find("", "v1", "namespaces") else {
        return Ok(true);
    };
    let ctx = Ctx::internal("", "v1", "namespaces", None);
    let (_, ns) = get_current(api, &ns_res, &ctx, namespace).await?;
    Ok(sel.matches_object(&ns))
}

/// upstream's object matcher: the new or the old object's labels.
fn object_matches(hook: &Value, obj: Option<&Value>, old: Option<&Value>) -> bool {
    let Some(sel) = selector(hook, "objectSelector") else {
        return true;
    };
    obj.is_some_and(|o| sel.matches_object(o)) || old.is_some_and(|o| sel.matches_object(o))
}

/// Runs the mutating webhooks on `obj` (None for DELETE), reinvoking as upstream; the object
/// as it was before them if any changed it.
pub async fn mutate(
    api: &Api,
    a: &Attrs<'_>,
    mut obj: Option<&mut Value>,
) -> ApiResult<Option<Value>> {
    if exempt(a.res) {
        return Ok(None);
    }
    let all = hooks(api).await;
    if !all.iter().any(|h| h.mutating) {
        return Ok(None);
    }
    let before = obj.as_deref().cloned();
    let mut any_changed = false;
    // Webhooks with `IfNeeded` called so far, and those to call again.
    let mut invoked: Vec<String> = Vec::new();
    let mut reinvoke: Vec<String> = Vec::new();
    for round in 0..2 {
        for hook in all.iter().filter(|h| h.mutating) {
            if round == 1 && !reinvoke.contains(&hook.id) {
                continue;
            }
            let changed = call_if_matching(api, hook, a, obj.as_deref_mut()).await?;
            if changed {
                any_changed = true;
                reinvoke.append(&mut invoked);
            }
            if hook.str("reinvocationPolicy") == Some("IfNeeded") && !invoked.contains(&hook.id) {
                invoked.push(hook.id.clone());
            }
        }
        if reinvoke.is_empty() {
            break;
        }
    }
    Ok(before.filter(|_| any_changed))
}

/// Runs the validating webhooks (`obj` is None for DELETE).
pub async fn validate(api: &Api, a: &Attrs<'_>, obj: Option<&Value>) -> ApiResult<()> {
    if exempt(a.res) {
        return Ok(());
    }
    let all = hooks(api).await;
    for hook in all.iter().filter(|h| !h.mutating) {
        let mut copy = obj.cloned();
        call_if_matching(api, hook, a, copy.as_mut()).await?;
    }
    Ok(())
}

/// Admission of a DELETE: mutating then validating webhooks see the object being deleted as
/// `oldObject`. The caller runs it before deleting (upstream: after the object was read, before
/// the delete is stored).
pub async fn admit_delete(api: &Api, res: &Resource, ctx: &Ctx, old: &Value) -> ApiResult<()> {
    let a = Attrs {
        res,
        ctx,
        operation: "DELETE",
        old: Some(old),
    };
    mutate(api, &a, None).await?;
    validate(api, &a, None).await
}

/// Calls `hook` if it matches; whether it changed `obj`.
async fn call_if_matching(
    api: &Api,
    hook: &Hook,
    a: &Attrs<'_>,
    obj: Option<&mut Value>,
) -> ApiResult<bool> {
    let namespace = a.namespace(obj.as_deref());
    let Some(as_res) = matched_resource(api, hook, a, &namespace) else {
        return Ok(false);
    };
    if !object_matches(&hook.spec, obj.as_deref(), a.old) {
        return Ok(false);
    }
    if !namespace_matches(api, &hook.spec, a, obj.as_deref(), &namespace).await? {
        return Ok(false);
    }
    if !conditions_match(hook, a, as_res.as_deref(), &namespace, obj.as_deref())? {
        return Ok(false);
    }
    if a.ctx.dry_run().unwrap_or(false)
        && !matches!(hook.str("sideEffects"), Some("None" | "NoneOnDryRun"))
    {
        return Err(ApiError::bad_request(format!(
            "admission webhook {:?} does not support dry run",
            hook.name
        )));
    }
    match call(api, hook, a, as_res.as_deref(), &namespace, obj).await {
        Ok(changed) => Ok(changed),
        Err(CallError::Denied(e)) => Err(e),
        Err(CallError::Failed(msg)) => {
            let msg = format!("failed calling webhook {:?}: {msg}", hook.name);
            if hook.fails_open() {
                tracing::warn!("admission webhook skipped (failurePolicy Ignore): {msg}");
                Ok(false)
            } else {
                Err(ApiError::internal(msg))
            }
        }
    }
}

/// Whether the webhook's matchConditions let it be called, as upstream's matcher: an error
/// refuses the request (Forbidden, as upstream) unless the failure policy is Ignore.
fn conditions_match(
    hook: &Hook,
    a: &Attrs,
    as_res: Option<&Resource>,
    namespace: &str,
    obj: Option<&Value>,
) -> ApiResult<bool> {
    let outcome = match &hook.conditions {
        Ok(c) if c.is_empty() => return Ok(true),
        Ok(c) => {
            // The request as the webhook would get it (its version of the objects).
            let review = review("", a, as_res.unwrap_or(a.res), namespace, obj);
            conditions::evaluate(c, &review["request"])
        }
        Err(e) => conditions::Outcome::Error(e.clone()),
    };
    match outcome {
        conditions::Outcome::Call => Ok(true),
        conditions::Outcome::Skip(_) => Ok(false),
        conditions::Outcome::Error(_) if hook.fails_open() => Ok(false),
        conditions::Outcome::Error(e) => {
            tracing::warn!(
                "failed evaluating match conditions of webhook {:?}, failing closed: {e}",
                hook.name
            );
            // upstream's NewForbidden: message and details name the request's resource.
            let (group, plural) = (&a.res.group, &a.res.plural);
            let what = crate::status::qualified(group, plural);
            let name = obj.or(a.old).map(object::name).unwrap_or_default();
            let mut err = ApiError::forbidden(if name.is_empty() {
                format!("{what} is forbidden: {e}")
            } else {
                format!("{what} {name:?} is forbidden: {e}")
            });
            let mut details = json!({"name": name, "group": group, "kind": plural});
            if let Some(d) = details.as_object_mut() {
                d.retain(|_, v| v.as_str() != Some(""));
            }
            err.details = Some(details);
            Err(err)
        }
    }
}

enum CallError {
    /// The webhook denied the request, or its answer cannot be applied.
    Denied(ApiError),
    /// The webhook could not be called or answered nonsense: the failure policy decides.
    Failed(String),
}

fn gvk(res: &Resource) -> Value {
    json!({"group": res.group, "version": res.version, "kind": res.kind})
}

fn gvr(res: &Resource) -> Value {
    json!({"group": res.group, "version": res.version, "resource": res.plural})
}

/// An object of `from` as `to` serves it (another version of the same stored objects).
fn convert_to(from: &Resource, to: &Resource, obj: &Value) -> Value {
    let mut v = convert::from_storage(to, convert::to_storage(from, obj.clone()));
    v["apiVersion"] = json!(to.api_version());
    v
}

/// The AdmissionReview sent for this request.
fn review(uid: &str, a: &Attrs, as_res: &Resource, namespace: &str, obj: Option<&Value>) -> Value {
    let user = &a.ctx.user;
    let name = obj
        .or(a.old)
        .map(|o| object::name(o).to_string())
        .unwrap_or_default();
    let options_kind = match a.operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        "DELETE" => "DeleteOptions",
        _ => "",
    };
    let mut options = json!({"kind": options_kind, "apiVersion": "meta.k8s.io/v1"});
    if let Some(m) = a.ctx.query.get("fieldManager") {
        options["fieldManager"] = json!(m);
    }
    let dry_run = a.ctx.dry_run().unwrap_or(false);
    if dry_run {
        options["dryRun"] = json!(["All"]);
    }
    let convert = |o: &Value| {
        if std::ptr::eq(as_res, a.res) {
            o.clone()
        } else {
            convert_to(a.res, as_res, o)
        }
    };
    let mut req = json!({
        "uid": uid,
        "kind": gvk(as_res),
        "resource": gvr(as_res),
        "requestKind": gvk(a.res),
        "requestResource": gvr(a.res),
        "name": name,
        "namespace": namespace,
        "operation": a.operation,
        "userInfo": {
            "username": user.name,
            "uid": user.uid,
            "groups": user.groups,
            "extra": user.extra,
        },
        "object": obj.map(convert).unwrap_or(Value::Null),
        "oldObject": a.old.map(convert).unwrap_or(Value::Null),
        "dryRun": dry_run,
        "options": if options_kind.is_empty() { Value::Null } else { options },
    });
    let sub = a.subresource();
    if !sub.is_empty() {
        req["subResource"] = json!(sub);
        req["requestSubResource"] = json!(sub);
    }
    if user.uid.is_empty() {
        req["userInfo"].as_object_mut().map(|m| m.remove("uid"));
    }
    if namespace.is_empty() {
        req.as_object_mut().map(|m| m.remove("namespace"));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// Sends the review and applies the answer; whether the object changed.
async fn call(
    api: &Api,
    hook: &Hook,
    a: &Attrs<'_>,
    as_res: Option<&Resource>,
    namespace: &str,
    obj: Option<&mut Value>,
) -> Result<bool, CallError> {
    let as_res = as_res.unwrap_or(a.res);
    let uid = uuid::Uuid::new_v4().to_string();
    let body = review(&uid, a, as_res, namespace, obj.as_deref());
    let answer = post(api, hook, &body).await.map_err(CallError::Failed)?;
    let (version, kind) = (answer["apiVersion"].as_str(), answer["kind"].as_str());
    if version != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
        return Err(CallError::Failed(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            version.unwrap_or_default(),
            kind.unwrap_or_default()
        )));
    }
    let resp = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or_else(|| {
            CallError::Failed("received invalid webhook response: response is nil".into())
        })?;
    let got = resp["uid"].as_str().unwrap_or_default();
    if got != uid {
        return Err(CallError::Failed(format!(
            "expected response.uid={uid:?}, got {got:?}"
        )));
    }
    for w in resp["warnings"].as_array().into_iter().flatten() {
        if let Some(w) = w.as_str().filter(|w| !w.is_empty()) {
            a.ctx.warn(w.to_string());
        }
    }
    let patch = resp["patch"].as_str().filter(|p| !p.is_empty());
    // Malformed answers are call failures (the failure policy decides), as upstream's checks.
    if patch.is_some() && !hook.mutating {
        return Err(CallError::Failed(
            "validating webhooks may not return patches".into(),
        ));
    }
    match (patch, resp["patchType"].as_str()) {
        (Some(_), None) => {
            return Err(CallError::Failed(
                "webhook returned response.patch but not response.patchType".into(),
            ));
        }
        (Some(_), Some(t)) if t != "JSONPatch" => {
            return Err(CallError::Failed(format!(
                "webhook returned invalid response.patchType of {t:?}"
            )));
        }
        _ => {}
    }
    if resp["allowed"].as_bool() != Some(true) {
        return Err(CallError::Denied(denied(&hook.name, resp.get("status"))));
    }
    let Some(patch) = patch else {
        return Ok(false);
    };
    // A patch that cannot be applied fails the request whatever the failure policy.
    let bad = |e: String| CallError::Denied(ApiError::internal(e));
    let Some(obj) = obj else {
        return Err(bad(format!(
            "admission webhook {:?} attempted to modify the object, which is not supported for this operation",
            hook.name
        )));
    };
    let patch: json_patch::Patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            bad(format!(
                "admission webhook {:?} returned an invalid patch: {e}",
                hook.name
            ))
        })?;
    let mut patched = if std::ptr::eq(as_res, a.res) {
        obj.clone()
    } else {
        convert_to(a.res, as_res, obj)
    };
    json_patch::patch(&mut patched, &patch).map_err(|e| bad(e.to_string()))?;
    if !std::ptr::eq(as_res, a.res) {
        patched = convert_to(as_res, a.res, &patched);
    }
    if let Some(check) = a.res.decode_check {
        check(&patched).map_err(|e| {
            bad(format!(
                "admission webhook {:?} made an invalid {}: {e}",
                hook.name, a.res.kind
            ))
        })?;
    }
    if patched == *obj {
        return Ok(false);
    }
    if a.res.custom.is_none() {
        super::defaults::apply(a.res, &mut patched);
    }
    *obj = patched;
    Ok(true)
}

/// upstream's ToStatusErr: the webhook's Status, with its message prefixed by who denied it.
fn denied(name: &str, status: Option<&Value>) -> ApiError {
    let empty = json!({});
    let s = status.filter(|s| s.is_object()).unwrap_or(&empty);
    let code = s["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(403);
    let by = format!("admission webhook {name:?} denied the request");
    let message = match (s["message"].as_str(), s["reason"].as_str()) {
        (Some(m), _) if !m.is_empty() => format!("{by}: {m}"),
        (_, Some(r)) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let mut e = ApiError::new(code, reason(s["reason"].as_str().unwrap_or("")), message);
    e.details = s.get("details").filter(|d| d.is_object()).cloned();
    e
}

/// A Status reason as the static string errors carry (an unknown one is dropped).
fn reason(r: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    KNOWN.iter().find(|k| **k == r).copied().unwrap_or("")
}

/// Where a webhook is reached: addresses to dial, the TLS server name and the request path.
struct Target {
    addrs: Vec<SocketAddr>,
    server_name: String,
    host: String,
    path: String,
    shown: String,
}

async fn target(hook: &Hook) -> Result<Target, String> {
    let cc = &hook.spec["clientConfig"];
    if let Some(url) = cc["url"].as_str() {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("webhook url {url:?} must use https"));
        }
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(443);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| format!("dial tcp: lookup {bare}: {e}"))?
            .collect();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        return Ok(Target {
            addrs,
            server_name: bare,
            host: format!("{host}:{port}"),
            path,
            shown: url.to_string(),
        });
    }
    let svc = ServiceRef::of(&cc["service"])
        .ok_or("webhook has neither clientConfig.url nor clientConfig.service")?;
    let path = cc["service"]["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let server_name = svc.server_name();
    let port = svc.port;
    Ok(Target {
        addrs: Vec::new(),
        host: format!("{server_name}:{port}"),
        shown: format!("https://{server_name}:{port}{path}"),
        path: path.to_string(),
        server_name,
    })
}

/// The ready endpoint addresses behind the webhook's Service port.
async fn resolve_service(api: &Api, hook: &Hook) -> Result<Vec<SocketAddr>, String> {
    let svc = ServiceRef::of(&hook.spec["clientConfig"]["service"])
        .ok_or("webhook has neither clientConfig.url nor clientConfig.service")?;
    service_backend::resolve(api, &svc)
        .await
        .map_err(|u| u.message)
}

/// POSTs the review to the webhook within its timeout; the decoded answer.
async fn post(api: &Api, hook: &Hook, body: &Value) -> Result<Value, String> {
    let timeout = hook.timeout();
    // A URL's name lookup counts against the webhook's timeout too.
    let t = tokio::time::timeout(timeout, target(hook))
        .await
        .map_err(|_| "failed to call webhook: lookup: context deadline exceeded".to_string())??;
    let secs = timeout.as_secs();
    let sep = if t.path.contains('?') { '&' } else { '?' };
    let path = format!("{}{sep}timeout={secs}s", t.path);
    let shown = format!("Post \"{}{sep}timeout={secs}s\"", t.shown);
    let tls = hook.tls.clone()?;
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let attempt = async {
        let addrs = if t.addrs.is_empty() {
            resolve_service(api, hook).await?
        } else {
            t.addrs.clone()
        };
        send(tls, &t, &addrs, &path, bytes).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("failed to call webhook: {shown}: {e}")),
        Err(_) => Err(format!(
            "failed to call webhook: {shown}: context deadline exceeded"
        )),
    }
}

/// One HTTP/1.1 POST over TLS to the first of `addrs` that accepts the connection.
async fn send(
    tls: Arc<rustls::ClientConfig>,
    t: &Target,
    addrs: &[SocketAddr],
    path: &str,
    body: Vec<u8>,
) -> Result<Value, String> {
    let (_, mut sender) = service_backend::connect(&tls, &t.server_name, addrs).await?;
    let req = http::Request::post(path)
        .header(http::header::HOST, &t.host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(format!(
            "the server responded with status code {}: {}",
            status.as_u16(),
            text.trim()
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("received invalid webhook response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Query;

    fn attrs<'a>(res: &'a Resource, ctx: &'a Ctx, op: &'static str) -> Attrs<'a> {
        Attrs {
            res,
            ctx,
            operation: op,
            old: None,
        }
    }

    fn pods() -> Resource {
        crate::registry::builtins()
            .into_iter()
            .find(|r| r.group.is_empty() && r.plural == "pods")
            .unwrap()
    }

    #[test]
    fn rules_match_resources_subresources_and_scope_as_upstream() {
        let pods = pods();
        let mut ctx = Ctx::internal("", "v1", "pods", Some("ns"));
        let rule = |resources: Value, scope: &str| {
            json!({"rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": resources, "scope": scope}]})
        };
        let a = attrs(&pods, &ctx, "CREATE");
        assert!(rule_matches(&rule(json!(["pods"]), "*"), &a, &pods, "ns"));
        assert!(rule_matches(
            &rule(json!(["*"]), "Namespaced"),
            &a,
            &pods,
            "ns"
        ));
        assert!(!rule_matches(
            &rule(json!(["*"]), "Cluster"),
            &a,
            &pods,
            "ns"
        ));
        assert!(!rule_matches(
            &rule(json!(["pods/status"]), "*"),
            &a,
            &pods,
            "ns"
        ));
        assert!(!rule_matches(
            &rule(json!(["services"]), "*"),
            &a,
            &pods,
            "ns"
        ));
        let update = attrs(&pods, &ctx, "UPDATE");
        assert!(!rule_matches(
            &rule(json!(["pods"]), "*"),
            &update,
            &pods,
            "ns"
        ));
        ctx.path.subresource = Some("status".into());
        let a = attrs(&pods, &ctx, "CREATE");
        assert!(!rule_matches(&rule(json!(["pods"]), "*"), &a, &pods, "ns"));
        assert!(!rule_matches(&rule(json!(["*"]), "*"), &a, &pods, "ns"));
        assert!(rule_matches(
            &rule(json!(["pods/status"]), "*"),
            &a,
            &pods,
            "ns"
        ));
        assert!(rule_matches(&rule(json!(["*/*"]), "*"), &a, &pods, "ns"));
        assert!(rule_matches(&rule(json!(["pods/*"]), "*"), &a, &pods, "ns"));
    }

    #[test]
    fn denial_carries_the_webhook_status_as_upstream() {
        let e = denied(
            "deny.example.com",
            Some(&json!({"message": "no", "code": 422, "reason": "Invalid"})),
        );
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request: no"
        );
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        let e = denied("d.example.com", Some(&json!({"code": 200})));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "admission webhook \"d.example.com\" denied the request without explanation"
        );
    }

    #[test]
    fn objects_are_matched_by_new_or_old_labels() {
        let hook = json!({"objectSelector": {"matchLabels": {"a": "b"}}});
        let with = json!({"metadata": {"labels": {"a": "b"}}});
        let without = json!({"metadata": {}});
        assert!(object_matches(&hook, Some(&with), None));
        assert!(object_matches(&hook, Some(&without), Some(&with)));
        assert!(!object_matches(&hook, Some(&without), None));
        assert!(object_matches(
            &json!({"objectSelector": {}}),
            Some(&without),
            None
        ));
    }

    #[test]
    fn match_conditions_skip_or_fail_as_the_failure_policy_says() {
        let pods = pods();
        let ctx = Ctx::internal("", "v1", "pods", Some("default"));
        let a = attrs(&pods, &ctx, "CREATE");
        let hook = |policy: &str, expr: &str| {
            let spec = json!({"failurePolicy": policy,
                "matchConditions": [{"name": "c", "expression": expr}]});
            Hook {
                id: "c/h".into(),
                name: "h.example.com".into(),
                mutating: false,
                conditions: conditions::from_spec(&spec),
                tls: Err("unused".into()),
                spec,
            }
        };
        let pod = json!({"metadata": {"name": "p", "namespace": "default",
            "labels": {"team": "a"}}});
        let check = |h: &Hook| conditions_match(h, &a, None, "default", Some(&pod));
        let team_a = "object.metadata.labels.team == 'a' && request.namespace == 'default'";
        assert!(check(&hook("Fail", team_a)).unwrap());
        assert!(!check(&hook("Fail", "request.operation == 'UPDATE'")).unwrap());
        let broken = "object.spec.missing == 1";
        assert!(!check(&hook("Ignore", broken)).unwrap());
        let e = check(&hook("Fail", broken)).unwrap_err();
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(e.details, Some(json!({"name": "p", "kind": "pods"})));
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: expression 'object.spec.missing == 1' resulted in error: \
             No such key: spec"
        );
    }

    /// A configuration stored as an older API server may have left it (sideEffects `Some` is
    /// refused on create today): dry-run requests it matches are refused, others call it.
    #[tokio::test]
    async fn dry_run_refuses_webhooks_with_side_effects() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::test_api(dir.path()).await;
        let pods = pods();
        let ca = rcgen::CertificateParams::new(vec!["x.example".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "legacy"},
            "webhooks": [{
                "name": "side.example.com",
                "sideEffects": "Some",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "url": "https://127.0.0.1:1/",
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
                },
                "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                    "resources": ["pods"]}],
            }],
        });
        let res = api
            .registry
            .find(GROUP, "v1", "validatingwebhookconfigurations")
            .unwrap();
        api.store
            .create(
                &res.key(None, "legacy"),
                serde_json::to_vec(&config).unwrap().into(),
            )
            .await
            .unwrap();
        // The cache follows the store through a watch.
        for _ in 0..100 {
            if !hooks(&api).await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}});
        let mut ctx = Ctx::internal("", "v1", "pods", Some("default"));
        ctx.query = Query::parse(Some("dryRun=All"));
        let e = validate(&api, &attrs(&pods, &ctx, "CREATE"), Some(&pod))
            .await
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "admission webhook \"side.example.com\" does not support dry run"
        );
        let ctx = Ctx::internal("", "v1", "pods", Some("default"));
        let e = validate(&api, &attrs(&pods, &ctx, "CREATE"), Some(&pod))
            .await
            .unwrap_err();
        assert_eq!(e.code, 500);
        assert!(
            e.message
                .contains("failed calling webhook \"side.example.com\": failed to call webhook"),
            "{}",
            e.message
        );
        // Not matched: a Service.
        let svcs = api.registry.find("", "v1", "services").unwrap();
        let ctx = Ctx::internal("", "v1", "services", Some("default"));
        validate(&api, &attrs(&svcs, &ctx, "CREATE"), Some(&pod))
            .await
            .unwrap();
    }
}
