//! The object lifecycle, the one way every caller (the HTTP verbs, patch, scale, the
//! subresources, bootstrap, the garbage collector and the namespace controller) reads and
//! writes objects: get, prepare and create, prepare and commit an update, delete. Each step
//! runs admission, bookkeeping (uid, timestamps, generation, managed fields), the namespace
//! lifecycle check and the per-kind hooks; nothing here knows about HTTP.

use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::kinds;
use super::object::{self, meta_mut, meta_str};
use super::registry::Resource;
use super::status::{ApiError, ApiResult, success_status};
use bytes::Bytes;
use kinglet_store::{Record, StoreError};

/// Turns a stored record into the object clients see for `res`.
pub(crate) fn decorate(res: &Resource, rec: &Record) -> ApiResult<Value> {
    let obj: Value = serde_json::from_slice(&rec.value)
        .map_err(|e| ApiError::internal(format!("decoding stored object: {e}")))?;
    Ok(served_form(res, obj, rec.rev))
}

/// A decoded stored object as clients see it for `res`: converted to `res`'s version, with
/// its type and resourceVersion.
pub(crate) fn served_form(res: &Resource, stored: Value, rev: i64) -> Value {
    let mut obj = super::convert::from_storage(res, stored);
    set_type_meta(res, &mut obj);
    meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
    obj
}

fn set_type_meta(res: &Resource, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(res.api_version()));
        m.insert("kind".into(), Value::String(res.kind.clone()));
    }
}

/// Serialises an object for storage (no resourceVersion, stored form of the kind).
pub(crate) fn encode(res: &Resource, obj: &Value) -> Bytes {
    let mut v = super::convert::to_storage(res, obj.clone());
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

pub(crate) fn ns_of<'a>(res: &Resource, ctx: &'a Ctx) -> Option<&'a str> {
    if res.namespaced {
        ctx.path.namespace.as_deref()
    } else {
        None
    }
}

fn key_for(res: &Resource, ctx: &Ctx, name: &str) -> String {
    res.key(ns_of(res, ctx), name)
}

/// Reads the current object or answers 404.
pub async fn get_current(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
) -> ApiResult<(Record, Value)> {
    let rec = api
        .store
        .get(&key_for(res, ctx, name))
        .await
        .map_err(|e| ApiError::from_store(e, &res.group, &res.plural, name))?
        .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
    let obj = decorate(res, &rec)?;
    Ok((rec, obj))
}

/// Checks `apiVersion`/`kind` of a request body against the endpoint and fills them if absent.
pub(crate) fn check_type_meta(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized or invalid: expected a JSON object",
        ));
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != res.kind || !av.is_empty() && av != res.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            res.api_version()
        ))
        .with_kind_mismatch(kind, &res.kind));
    }
    set_type_meta(res, obj);
    Ok(())
}

impl ApiError {
    fn with_kind_mismatch(self, got: &str, want: &str) -> ApiError {
        if !got.is_empty() && got != want {
            return ApiError::bad_request(format!(
                "the kind in the data ({got}) does not match the expected kind ({want})"
            ));
        }
        self
    }
}

/// Namespace lifecycle admission: no new objects in a missing or terminating namespace.
async fn check_namespace(api: &Api, ns: &str) -> ApiResult<()> {
    let nsres = api
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not registered"))?;
    // From the watch cache, as upstream's NamespaceLifecycle reads its informer: a read of
    // the store per create would double the datastore's requests. A namespace the cache does
    // not hold yet (just created, or the cache not loaded) is read from the store.
    let key = nsres.key(None, ns);
    let cached = api.watch_cache.get(&key).ok().flatten();
    let deleting = match cached {
        Some(entry) => object::is_deleting(&entry.obj),
        None => {
            let rec = api
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::from_store(e, "", "namespaces", ns))?
                .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
            let obj: Value = serde_json::from_slice(&rec.value).unwrap_or_default();
            object::is_deleting(&obj)
        }
    };
    if deleting {
        let mut e = ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ));
        e.details = Some(
            json!({"name": ns, "kind": "namespaces", "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
        );
        return Err(e);
    }
    Ok(())
}

/// Admission and bookkeeping for a new object; returns it ready to store.
async fn prepare_create(api: &Api, res: &Resource, ctx: &Ctx, mut obj: Value) -> ApiResult<Value> {
    check_type_meta(res, &mut obj)?;
    create_strategy(res, ctx, &mut obj)?;
    if object::name(&obj).is_empty()
        && let Some(base) = meta_str(&obj, "generateName").map(String::from)
    {
        let base: String = base.chars().take(58).collect();
        meta_mut(&mut obj).insert(
            "name".into(),
            json!(format!("{base}{}", object::random_suffix(5))),
        );
    }
    let kind = kinds::of(res);
    super::admission::admit(api, res, ctx, &mut obj, None).await?;
    if kind.tracks_generation(res, &obj) {
        meta_mut(&mut obj).insert("generation".into(), json!(1));
    }
    if let Err(e) = super::managed::record_update(ctx, res, &mut obj, None, None) {
        kind.create_failed(api, &obj).await;
        return Err(e);
    }
    Ok(obj)
}

/// What a create may set, as upstream's strategies decide (`PrepareForCreate` and the
/// namespace check): the request's namespace, the fields the server owns, no status. Applied
/// again after mutating admission webhooks, as upstream applies it after all mutating admission.
pub(crate) fn create_strategy(res: &Resource, ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    let url_ns = ns_of(res, ctx).map(String::from);
    {
        let m = meta_mut(obj);
        if res.namespaced {
            match (m.get("namespace").and_then(Value::as_str), &url_ns) {
                (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            m.insert(
                "namespace".into(),
                json!(url_ns.clone().unwrap_or_default()),
            );
        } else {
            m.remove("namespace");
        }
        for k in [
            "resourceVersion",
            "uid",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            m.remove(k);
        }
        m.insert("creationTimestamp".into(), json!(object::now_time()));
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    kinds::of(res).prepare_for_create(res, obj);
    Ok(())
}

/// Creates an object through the full admission path; shared by POST and apply-creates.
pub(crate) async fn create_object(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    obj: Value,
) -> ApiResult<Value> {
    let generated = object::name(&obj).is_empty()
        && meta_str(&obj, "generateName").is_some_and(|g| !g.is_empty());
    let dry_run = ctx.dry_run()?;
    let kind = kinds::of(res);
    let mut attempt = 0;
    loop {
        let mut prepared = prepare_create(api, res, ctx, obj.clone()).await?;
        super::omit::normalize(res, &mut prepared);
        if let Some(ns) = ns_of(res, ctx)
            && let Err(e) = check_namespace(api, ns).await
        {
            kind.create_failed(api, &prepared).await;
            return Err(e);
        }
        let name = object::name(&prepared).to_string();
        if dry_run {
            kind.create_failed(api, &prepared).await;
            return Ok(prepared);
        }
        let key = key_for(res, ctx, &name);
        match api.store.create(&key, encode(res, &prepared)).await {
            Ok(rev) => {
                meta_mut(&mut prepared).insert("resourceVersion".into(), json!(rev.to_string()));
                return Ok(prepared);
            }
            Err(StoreError::AlreadyExists) if generated && attempt < 8 => {
                kind.create_failed(api, &prepared).await;
                attempt += 1
            }
            Err(e) => {
                kind.create_failed(api, &prepared).await;
                return Err(ApiError::from_store(e, &res.group, &res.plural, &name));
            }
        }
    }
}

/// Replaces object `name` with `new` (PUT, or of subresource `sub`): checks its name,
/// namespace and resourceVersion precondition, then prepares and commits the update.
pub(crate) async fn update_object(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    mut new: Value,
    sub: Option<&str>,
) -> ApiResult<Value> {
    check_type_meta(res, &mut new)?;
    if object::name(&new).is_empty() {
        meta_mut(&mut new).insert("name".into(), json!(name));
    }
    name_matches_url(&new, name)?;
    if let (true, Some(body_ns), Some(url_ns)) =
        (res.namespaced, object::namespace(&new), ns_of(res, ctx))
        && body_ns != url_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let precondition = meta_str(&new, "resourceVersion")
        .filter(|s| !s.is_empty())
        .map(String::from);
    let (rec, old) = get_current(api, res, ctx, name).await?;
    match &precondition {
        Some(rv) if rv.parse::<i64>().ok() != Some(rec.rev) => {
            if rv.parse::<i64>().is_err() {
                return Err(ApiError::bad_request(format!(
                    "invalid resource version: {rv}"
                )));
            }
            return Err(ApiError::conflict(&res.group, &res.plural, name));
        }
        None if res.is_custom() => {
            return Err(ApiError::invalid(
                &res.group,
                &res.kind,
                name,
                vec![super::status::Cause::invalid(
                    "metadata.resourceVersion",
                    &json!("0x0"),
                    "must be specified for an update",
                )],
            ));
        }
        _ => {}
    }
    let merged = prepare_update(api, res, ctx, &old, new, sub).await?;
    commit_update(api, res, ctx, rec.rev, &old, merged, sub).await
}

/// Builds the object an update (PUT or patch result) stores, from the old one and the new body.
pub(crate) async fn prepare_update(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    old: &Value,
    new: Value,
    sub: Option<&str>,
) -> ApiResult<Value> {
    let mut new = update_strategy(res, old, new, sub)?;
    super::admission::admit(api, res, ctx, &mut new, Some(old)).await?;
    let kind = kinds::of(res);
    if kind.tracks_generation(res, &new) {
        let mut generation = object::meta(old)
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if sub.is_none()
            && kind.generation_relevant(res, &new) != kind.generation_relevant(res, old)
        {
            generation += 1;
        }
        meta_mut(&mut new).insert("generation".into(), json!(generation.max(1)));
    }
    Ok(new)
}

/// An update's object must keep the name it is stored under.
pub(crate) fn name_matches_url(obj: &Value, name: &str) -> ApiResult<()> {
    match object::name(obj) {
        n if n == name => Ok(()),
        n => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
    }
}

/// What an update may change, as upstream's strategies decide (`PrepareForUpdate`): a
/// subresource only its part, the main resource everything but status and the fields the
/// server owns. Applied again after mutating admission webhooks, as upstream applies it after
/// all mutating admission.
pub(crate) fn update_strategy(
    res: &Resource,
    old: &Value,
    mut new: Value,
    sub: Option<&str>,
) -> ApiResult<Value> {
    let name = object::name(old).to_string();
    name_matches_url(&new, &name)?;
    match sub {
        Some("status") => {
            // Only status changes through the status subresource.
            let mut out = old.clone();
            out["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if out["status"].is_null() {
                out.as_object_mut().map(|m| m.remove("status"));
            }
            new = out;
        }
        Some("finalize") => {
            let mut out = old.clone();
            out["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            new = out;
        }
        Some("scale") => {
            // Only the replicas change through the scale subresource.
            let scale = super::scale::to_scale(res, &new);
            new = super::scale::set_replicas(res, old, &scale)?;
        }
        Some("approval") => {
            let mut out = old.clone();
            out["status"]["conditions"] = new
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or(json!([]));
            new = out;
        }
        Some("ephemeralcontainers") => {
            let mut out = old.clone();
            out["spec"]["ephemeralContainers"] = new
                .pointer("/spec/ephemeralContainers")
                .cloned()
                .unwrap_or(json!([]));
            new = out;
        }
        Some("resize") => {
            let mut out = old.clone();
            if let (Some(cs), Some(ncs)) = (
                out.pointer_mut("/spec/containers")
                    .and_then(Value::as_array_mut),
                new.pointer("/spec/containers").and_then(Value::as_array),
            ) {
                for (c, nc) in cs.iter_mut().zip(ncs) {
                    c["resources"] = nc.get("resources").cloned().unwrap_or(json!({}));
                }
            }
            new = out;
        }
        _ => {
            if res.has_status() {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            let old_meta = object::meta(old).clone();
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "selfLink",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            if object::is_deleting(old) {
                let before = object::finalizers(old);
                if object::finalizers(&new).iter().any(|f| !before.contains(f)) {
                    return Err(ApiError::invalid(
                        &res.group,
                        &res.kind,
                        &name,
                        vec![super::status::Cause::forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted",
                        )],
                    ));
                }
            }
        }
    }
    Ok(new)
}

/// Stores an update of `old` (at `old_rev`) to `new`, finishing deletion when the last finalizer
/// goes and skipping no-op writes, as upstream does. The kind's hooks follow: what `old` held
/// and `new` drops is released once stored; what admission reserved for `new` when it is not
/// (a dry run, a conflict, any error).
pub async fn commit_update(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    old_rev: i64,
    old: &Value,
    mut new: Value,
    sub: Option<&str>,
) -> ApiResult<Value> {
    let kind = kinds::of(res);
    match store_update(api, res, ctx, old_rev, old, &mut new, sub).await {
        Ok(Committed::Stored) => {
            kind.after_update(api, old, &new).await;
            Ok(new)
        }
        Ok(Committed::Unchanged) => Ok(old.clone()),
        Ok(Committed::DryRun) => {
            kind.update_failed(api, old, &new).await;
            Ok(new)
        }
        Err(e) => {
            kind.update_failed(api, old, &new).await;
            Err(e)
        }
    }
}

/// What [`store_update`] did.
enum Committed {
    Stored,
    /// A no-op update: nothing written.
    Unchanged,
    DryRun,
}

async fn store_update(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    old_rev: i64,
    old: &Value,
    new: &mut Value,
    sub: Option<&str>,
) -> ApiResult<Committed> {
    let name = object::name(old).to_string();
    let key = key_for(res, ctx, &name);
    // Every update is stored as upstream's types encode it (controllers come here directly).
    super::omit::normalize(res, new);
    if object::same_ignoring_bookkeeping(old, new) {
        return Ok(Committed::Unchanged);
    }
    let towards_deletion = only_drops_finalizers(old, new);
    super::managed::record_update(ctx, res, new, Some(old), sub)?;
    if ctx.dry_run()? {
        return Ok(Committed::DryRun);
    }
    let kind = kinds::of(res);
    if object::is_deleting(new)
        && object::finalizers(new).is_empty()
        && !kinds::by_plural(res).spec_finalizers_pending(new)
        && kind.graceful_period(new, None).is_none()
    {
        let (rev, _) = api
            .store
            .delete(&key, Some(old_rev))
            .await
            .map_err(|e| ApiError::from_store(e, &res.group, &res.plural, &name))?;
        after_delete(api, res, new).await;
        meta_mut(new).insert("resourceVersion".into(), json!(rev.to_string()));
        return Ok(Committed::Stored);
    }
    let value = encode(res, new);
    let rev = if towards_deletion {
        api.store
            .update_towards_deletion(&key, Some(old_rev), value)
            .await
    } else {
        api.store.update(&key, Some(old_rev), value).await
    }
    .map_err(|e| ApiError::from_store(e, &res.group, &res.plural, &name))?;
    meta_mut(new).insert("resourceVersion".into(), json!(rev.to_string()));
    Ok(Committed::Stored)
}

/// Whether `new` differs from `old`, an object being deleted, only by finalizers taken away
/// (its own, or a namespace's spec ones): deletion progress, which a full disk must not stop.
fn only_drops_finalizers(old: &Value, new: &Value) -> bool {
    const LISTS: [&str; 2] = ["/metadata/finalizers", "/spec/finalizers"];
    if !object::is_deleting(old) {
        return false;
    }
    let mut restored = new.clone();
    for path in LISTS {
        let list = |v: &Value| v.pointer(path).and_then(Value::as_array).cloned();
        let (before, after) = (list(old).unwrap_or_default(), list(new).unwrap_or_default());
        if after.iter().any(|f| !before.contains(f)) {
            return false;
        }
        let (parent, field) = path.rsplit_once('/').unwrap_or_default();
        let Some(obj) = restored.pointer_mut(parent).and_then(Value::as_object_mut) else {
            continue;
        };
        match old.pointer(path) {
            Some(v) => obj.insert(field.to_string(), v.clone()),
            None => obj.remove(field),
        };
    }
    object::same_ignoring_bookkeeping(old, &restored)
}

/// DeleteOptions from the body and query.
#[derive(Default, Debug)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub rv: Option<String>,
}

/// What follows every delete: tokens bound to the object die with it, and the kind's hook.
async fn after_delete(api: &Api, res: &Resource, obj: &Value) {
    api.auth.object_deleted(&res.group, &res.plural);
    kinds::of(res).after_delete(api, obj).await;
}

/// The answer to a delete that removed `obj`, as upstream's `finalizeDelete` gives it: the
/// object for the resources whose registry returns it, else a success Status naming it (with the
/// plural as `kind`, as upstream sets it).
fn deleted_answer(res: &Resource, obj: Value) -> Value {
    if kinds::delete_returns_object(res) {
        return obj;
    }
    let details = json!({
        "name": object::name(&obj),
        "group": res.group,
        "kind": res.plural,
        "uid": meta_str(&obj, "uid").unwrap_or_default(),
    });
    success_status(details)
}

/// Deletes one object: immediately, or by marking it (finalizers, graceful pods). Returns
/// whether it is gone from storage, and the body to answer: the object while it stays (being
/// deleted), [`deleted_answer`] once it is gone.
pub async fn delete_object(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<(bool, Value)> {
    let dry_run = ctx.dry_run()?;
    let kind = kinds::of(res);
    // Namespace-style deletion follows the plural (see `kinds::by_plural`).
    let plural_kind = kinds::by_plural(res);
    for _ in 0..5 {
        let (rec, mut obj) = get_current(api, res, ctx, name).await?;
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        if let Some(want) = &opts.uid
            && *want != uid
        {
            return Err(ApiError::conflict_msg(
                &res.group,
                &res.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(want) = &opts.rv
            && *want != rec.rev.to_string()
        {
            return Err(ApiError::conflict_msg(
                &res.group,
                &res.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                    rec.rev
                ),
            ));
        }
        // Admission webhooks see the object being deleted as `oldObject`.
        super::admission::webhook::admit_delete(api, res, ctx, &obj).await?;
        let mut finalizers = object::finalizers(&obj);
        let had = finalizers.clone();
        match opts.propagation.as_deref() {
            Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.push("orphan".into())
            }
            Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.push("foregroundDeletion".into())
            }
            Some("Background") => finalizers.retain(|f| f != "orphan" && f != "foregroundDeletion"),
            _ => {}
        }
        let namespace_pending = plural_kind.spec_finalizers_pending(&obj);
        let grace = kind.graceful_period(&obj, opts.grace);
        let deleting = object::is_deleting(&obj);
        if finalizers.is_empty() && !namespace_pending && grace.is_none() {
            if dry_run {
                return Ok((true, deleted_answer(res, obj)));
            }
            match api.store.delete(&rec.key, Some(rec.rev)).await {
                Ok(_) => {
                    after_delete(api, res, &obj).await;
                    return Ok((true, deleted_answer(res, obj)));
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(ApiError::from_store(e, &res.group, &res.plural, name)),
            }
        }
        if deleting && finalizers == had && grace.is_none() {
            // Already being deleted; nothing new to record.
            return Ok((false, obj));
        }
        {
            let now = chrono::Utc::now();
            let m = meta_mut(&mut obj);
            if !deleting {
                let at = now + chrono::Duration::seconds(grace.unwrap_or(0));
                m.insert(
                    "deletionTimestamp".into(),
                    json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert(
                    "deletionGracePeriodSeconds".into(),
                    json!(grace.unwrap_or(0)),
                );
                let generation = m.get("generation").and_then(Value::as_i64);
                if let Some(g) = generation {
                    m.insert("generation".into(), json!(g + 1));
                }
            } else if let Some(g) = grace {
                // A shorter grace period may replace a longer one.
                let cur = m
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MAX);
                if g < cur {
                    m.insert("deletionGracePeriodSeconds".into(), json!(g));
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(
                            (now + chrono::Duration::seconds(g))
                                .format("%Y-%m-%dT%H:%M:%SZ")
                                .to_string()
                        ),
                    );
                }
            }
        }
        object::set_finalizers(&mut obj, finalizers);
        plural_kind.mark_deleting(&mut obj);
        if dry_run {
            return Ok((false, obj));
        }
        // Marking the object deleted is the delete itself: it runs even on a full disk.
        match api
            .store
            .update_towards_deletion(&rec.key, Some(rec.rev), encode(res, &obj))
            .await
        {
            Ok(rev) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                return Ok((false, obj));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(ApiError::from_store(e, &res.group, &res.plural, name)),
        }
    }
    Err(ApiError::conflict(&res.group, &res.plural, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finalizers_dropped_from_an_object_being_deleted_is_deletion_progress() {
        let old = json!({
            "metadata": {"name": "a", "resourceVersion": "7", "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "finalizers": ["example.com/x", "example.com/y"]},
            "spec": {"finalizers": ["kubernetes"]},
            "data": {"k": "v"},
        });
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = old.clone();
            f(&mut v);
            v
        };
        let one_gone = with(&|v| v["metadata"]["finalizers"] = json!(["example.com/y"]));
        assert!(only_drops_finalizers(&old, &one_gone));
        let all_gone = with(&|v| {
            v["metadata"].as_object_mut().unwrap().remove("finalizers");
            v["metadata"]["resourceVersion"] = json!("8");
        });
        assert!(only_drops_finalizers(&old, &all_gone));
        let spec_gone = with(&|v| v["spec"]["finalizers"] = json!([]));
        assert!(only_drops_finalizers(&old, &spec_gone));
        // Anything else, a finalizer added, or an object not being deleted: an ordinary update.
        let data_too = with(&|v| {
            v["metadata"]["finalizers"] = json!(["example.com/y"]);
            v["data"]["k"] = json!("w");
        });
        assert!(!only_drops_finalizers(&old, &data_too));
        let swapped = with(&|v| v["metadata"]["finalizers"] = json!(["example.com/z"]));
        assert!(!only_drops_finalizers(&old, &swapped));
        let mut live = old.clone();
        live["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        let mut live_dropped = one_gone.clone();
        live_dropped["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        assert!(!only_drops_finalizers(&live, &live_dropped));
    }
}
