//! CustomResourceDefinitions: served dynamically through the same registry as built-ins,
//! validated against their structural `openAPIV3Schema`, with unknown fields pruned.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::object::{self, meta_str};
use super::registry::{CustomInfo, Resource, ScalePaths, Subresource};
use super::status::{ApiError, ApiResult, Cause};

pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Admission for CRDs: defaults and the rules that make a definition servable.
pub fn admit_crd(crd: &mut Value, old: Option<&Value>) -> ApiResult<()> {
    let name = object::name(crd).to_string();
    let mut causes = Vec::new();
    if let Some(spec) = crd.get_mut("spec").filter(|s| s.is_object()) {
        if spec.get("conversion").is_none() {
            spec["conversion"] = json!({"strategy": "None"});
        }
        let names = spec.get_mut("names").filter(|n| n.is_object());
        if let Some(names) = names {
            let plural = names
                .get("plural")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let kind = names
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if names.get("singular").is_none() {
                names["singular"] = json!(kind.to_lowercase());
            }
            if names.get("listKind").is_none() {
                names["listKind"] = json!(format!("{kind}List"));
            }
            if plural.is_empty() {
                causes.push(Cause::required("spec.names.plural"));
            }
            if kind.is_empty() {
                causes.push(Cause::required("spec.names.kind"));
            }
        } else {
            causes.push(Cause::required("spec.names"));
        }
    }
    let group = s(crd, "/spec/group").to_string();
    let plural = s(crd, "/spec/names/plural").to_string();
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = s(crd, "/spec/scope");
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::unsupported(
            "spec.scope",
            &json!(scope),
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            causes.push(Cause::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            )));
        }
    }
    if let Some(old) = old {
        for (ptr, field) in [
            ("/spec/group", "spec.group"),
            ("/spec/names/plural", "spec.names.plural"),
            ("/spec/scope", "spec.scope"),
        ] {
            if crd.pointer(ptr) != old.pointer(ptr) {
                causes.push(Cause::invalid(
                    field,
                    crd.pointer(ptr).unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    } else {
        let mut f = object::finalizers(crd);
        if !f.iter().any(|x| x == CLEANUP_FINALIZER) {
            f.push(CLEANUP_FINALIZER.into());
        }
        object::set_finalizers(crd, f);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            causes,
        ))
    }
}

/// The resources a CRD serves (one per served version).
pub fn resources_of(crd: &Value) -> Vec<Resource> {
    let group = s(crd, "/spec/group").to_string();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let plural = s(&names, "/plural").to_string();
    let kind = s(&names, "/kind").to_string();
    let strs = |p: &str| -> Vec<String> {
        names
            .pointer(p)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut out = Vec::new();
    for v in crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let version = s(v, "/name").to_string();
        let mut subresources = Vec::new();
        if v.pointer("/subresources/status").is_some() {
            subresources.push(Subresource {
                name: "status".into(),
                kind: kind.clone(),
                group: group.clone(),
                version: version.clone(),
                verbs: &["get", "patch", "update"],
            });
        }
        let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: s(sc, "/specReplicasPath").to_string(),
            status_replicas: s(sc, "/statusReplicasPath").to_string(),
            label_selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(String::from),
        });
        if scale.is_some() {
            subresources.push(Subresource {
                name: "scale".into(),
                kind: "Scale".into(),
                group: "autoscaling".into(),
                version: "v1".into(),
                verbs: &["get", "patch", "update"],
            });
        }
        let schema = v.pointer("/schema/openAPIV3Schema").cloned();
        out.push(Resource {
            group: group.clone(),
            version,
            kind: kind.clone(),
            plural: plural.clone(),
            singular: s(&names, "/singular").to_string(),
            namespaced: s(crd, "/spec/scope") == "Namespaced",
            short_names: strs("/shortNames"),
            categories: strs("/categories"),
            subresources,
            storage: (group.clone(), plural.clone()),
            create_only: false,
            computed: false,
            schema: None,
            schema_name: None,
            decode_check: None,
            custom: Some(Arc::new(CustomInfo {
                schema,
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                scale,
            })),
        });
    }
    out
}

/// Validates a custom object against its schema, applies defaults and prunes unknown fields.
pub fn validate_custom(
    res: &Resource,
    info: &CustomInfo,
    ctx: &Ctx,
    obj: &mut Value,
) -> ApiResult<()> {
    let mut causes = Vec::new();
    super::admission::validation::metadata(res, obj, &mut causes);
    if let Some(schema) = &info.schema {
        let mut unknown = Vec::new();
        let mut v = Validator {
            causes: &mut causes,
            unknown: &mut unknown,
        };
        let metadata = obj.get("metadata").cloned();
        v.check(schema, obj, "", true);
        // The root's type meta and metadata are never pruned.
        if let (Some(m), Some(md)) = (obj.as_object_mut(), metadata) {
            m.insert("metadata".into(), md);
            m.insert("apiVersion".into(), json!(res.api_version()));
            m.insert("kind".into(), json!(res.kind));
        }
        super::admission::schema::report_unknown(ctx, ctx.field_validation()?, unknown)?;
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &res.group,
            &res.kind,
            object::name(obj),
            causes,
        ))
    }
}

/// The fields of ObjectMeta (`metav1.ObjectMeta`'s JSON names).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

struct Validator<'a> {
    causes: &'a mut Vec<Cause>,
    unknown: &'a mut Vec<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl Validator<'_> {
    /// Checks `metadata.name` and `metadata.generateName` against the schema's rules for them.
    /// Fields that ObjectMeta does not have are unknown, as decoding into it makes them.
    fn check_metadata(&mut self, schema: &Value, metadata: &mut Value, path: &str) {
        if let Some(m) = metadata.as_object_mut() {
            m.retain(|k, _| {
                let known = OBJECT_META_FIELDS.contains(&k.as_str());
                if !known {
                    self.unknown.push(format!("{path}.{k}"));
                }
                known
            });
        }
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for field in ["name", "generateName"] {
            if let (Some(ps), Some(v)) = (props.get(field), metadata.get_mut(field)) {
                self.check(ps, v, &format!("{path}.{field}"), false);
            }
        }
    }

    fn invalid(&mut self, path: &str, v: &Value, msg: String) {
        self.causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {msg}", shown(v)),
        ));
    }

    /// Checks `v` against `schema` at `path`, pruning unknown fields in place.
    fn check(&mut self, schema: &Value, v: &mut Value, path: &str, root: bool) {
        let field = if path.is_empty() {
            "<root>".to_string()
        } else {
            path.to_string()
        };
        if v.is_null() {
            if schema.get("nullable").and_then(Value::as_bool) != Some(true)
                && !root
                && let Some(t) = schema.get("type").and_then(Value::as_str)
            {
                self.invalid(
                    path,
                    v,
                    format!("{field} in body must be of type {t}: \"null\""),
                );
            }
            return;
        }
        let int_or_string = schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true);
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let actual = type_name(v);
            let ok = actual == t
                || (t == "number" && actual == "integer")
                || (int_or_string && (actual == "integer" || actual == "string"));
            if !ok {
                self.invalid(
                    path,
                    v,
                    format!("{field} in body must be of type {t}: \"{actual}\""),
                );
                return;
            }
        }
        if let Some(en) = schema.get("enum").and_then(Value::as_array)
            && !en.contains(v)
        {
            let allowed: Vec<String> = en.iter().map(shown).collect();
            self.causes.push(Cause::new(
                "FieldValueNotSupported",
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(v),
                    allowed.join(", ")
                ),
            ));
        }
        match v {
            Value::Object(m) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                let preserve = schema
                    .get("x-kubernetes-preserve-unknown-fields")
                    .and_then(Value::as_bool)
                    == Some(true);
                let embedded = schema
                    .get("x-kubernetes-embedded-resource")
                    .and_then(Value::as_bool)
                    == Some(true);
                if let Some(props) = props {
                    for (k, ps) in props {
                        if !m.contains_key(k)
                            && let Some(d) = ps.get("default")
                        {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
                for req in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !m.contains_key(req) {
                        self.causes.push(Cause::required(if path.is_empty() {
                            req.to_string()
                        } else {
                            format!("{path}.{req}")
                        }));
                    }
                }
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let known = (root || embedded)
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                    match (props.and_then(|p| p.get(&k)), additional) {
                        // The object's metadata is ObjectMeta whatever the schema says
                        // (controller-gen writes `metadata: {type: object}`); only the
                        // schema's rules for name and generateName apply, as upstream.
                        (ps, _) if known && k == "metadata" => {
                            if let Some(cv) = m.get_mut(&k) {
                                self.check_metadata(ps.unwrap_or(&Value::Null), cv, &child);
                            }
                        }
                        (Some(ps), _) => {
                            if let Some(cv) = m.get_mut(&k) {
                                self.check(ps, cv, &child, false);
                            }
                        }
                        (None, Some(a)) if a.is_object() => {
                            if let Some(cv) = m.get_mut(&k) {
                                self.check(a, cv, &child, false);
                            }
                        }
                        (None, Some(Value::Bool(true))) => {}
                        _ if known || preserve => {}
                        _ => {
                            self.unknown.push(child);
                            m.remove(&k);
                        }
                    }
                }
                self.bounds(schema, path, v);
            }
            Value::Array(items) => {
                if let Some(is) = schema.get("items") {
                    for (i, it) in items.iter_mut().enumerate() {
                        self.check(is, it, &format!("{path}[{i}]"), false);
                    }
                }
                self.bounds(schema, path, v);
            }
            _ => self.bounds(schema, path, v),
        }
    }

    fn bounds(&mut self, schema: &Value, path: &str, v: &Value) {
        let num = |k: &str| schema.get(k).and_then(Value::as_f64);
        match v {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                if let Some(min) = num("minimum") {
                    let excl =
                        schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                    if x < min || excl && x == min {
                        self.invalid(
                            path,
                            v,
                            format!(
                                "{path} in body should be greater than {}{min}",
                                if excl { "" } else { "or equal to " }
                            ),
                        );
                    }
                }
                if let Some(max) = num("maximum") {
                    let excl =
                        schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                    if x > max || excl && x == max {
                        self.invalid(
                            path,
                            v,
                            format!(
                                "{path} in body should be less than {}{max}",
                                if excl { "" } else { "or equal to " }
                            ),
                        );
                    }
                }
            }
            Value::String(st) => {
                let len = st.chars().count() as f64;
                if num("maxLength").is_some_and(|m| len > m) {
                    self.causes.push(Cause::new(
                        "FieldValueTooLong",
                        path,
                        format!(
                            "Too long: may not be more than {} bytes",
                            num("maxLength").unwrap_or(0.0)
                        ),
                    ));
                }
                if num("minLength").is_some_and(|m| len < m) {
                    self.invalid(
                        path,
                        v,
                        format!(
                            "{path} in body should be at least {} chars long",
                            num("minLength").unwrap_or(0.0)
                        ),
                    );
                }
                if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                    && regex::Regex::new(p).is_ok_and(|re| !re.is_match(st))
                {
                    self.invalid(path, v, format!("{path} in body should match '{p}'"));
                }
            }
            Value::Array(a) => {
                let n = a.len() as f64;
                if num("maxItems").is_some_and(|m| n > m) {
                    self.causes.push(Cause::new(
                        "FieldValueTooMany",
                        path,
                        format!(
                            "Too many: {n}: must have at most {} items",
                            num("maxItems").unwrap_or(0.0)
                        ),
                    ));
                }
                if num("minItems").is_some_and(|m| n < m) {
                    self.invalid(
                        path,
                        v,
                        format!(
                            "{path} in body should have at least {} items",
                            num("minItems").unwrap_or(0.0)
                        ),
                    );
                }
            }
            Value::Object(m) => {
                let n = m.len() as f64;
                if num("maxProperties").is_some_and(|x| n > x) {
                    self.causes.push(Cause::new(
                        "FieldValueTooMany",
                        path,
                        format!(
                            "Too many: {n}: must have at most {} items",
                            num("maxProperties").unwrap_or(0.0)
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Rebuilds the registry from stored CRDs, marks them Established, and finishes deletions.
pub async fn sync(api: &Api) -> anyhow::Result<()> {
    let crd_res = api
        .registry
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| anyhow::anyhow!("CRDs not registered"))?;
    let page = api.store.list(&crd_res.prefix(), 0, None, None).await?;
    let mut resources = Vec::new();
    for rec in &page.items {
        let crd: Value = serde_json::from_slice(&rec.value)?;
        if object::is_deleting(&crd) {
            finish_delete(api, &crd_res, rec.rev, &crd).await?;
            continue;
        }
        resources.extend(resources_of(&crd));
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Established")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
            && crd.pointer("/status/acceptedNames") == crd.pointer("/spec/names");
        if !established {
            let mut new = crd.clone();
            let now = object::now_time();
            new["status"] = json!({
                "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
                ],
                "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>(),
            });
            let _ = api
                .store
                .update(
                    &rec.key,
                    Some(rec.rev),
                    super::lifecycle::encode(&crd_res, &new),
                )
                .await;
        }
    }
    api.registry.set_custom(resources);
    Ok(())
}

/// A deleted CRD takes its custom objects with it, then its cleanup finalizer goes.
async fn finish_delete(api: &Api, crd_res: &Resource, rev: i64, crd: &Value) -> anyhow::Result<()> {
    if !object::finalizers(crd)
        .iter()
        .any(|f| f == CLEANUP_FINALIZER)
    {
        return Ok(());
    }
    let prefix = crate::registry::group_prefix(s(crd, "/spec/group"), s(crd, "/spec/names/plural"));
    let page = api.store.list(&prefix, 0, None, None).await?;
    for rec in page.items {
        let _ = api.store.delete(&rec.key, None).await;
    }
    let mut new = crd.clone();
    let rest: Vec<String> = object::finalizers(crd)
        .into_iter()
        .filter(|f| f != CLEANUP_FINALIZER)
        .collect();
    object::set_finalizers(&mut new, rest.clone());
    let key = crd_res.key(None, meta_str(crd, "name").unwrap_or_default());
    if rest.is_empty() {
        api.store.delete(&key, Some(rev)).await?;
    } else {
        api.store
            .update(&key, Some(rev), super::lifecycle::encode(crd_res, &new))
            .await?;
    }
    Ok(())
}

/// Keeps the registry in step with CRD changes.
pub fn spawn_watcher(api: Arc<Api>) {
    tokio::spawn(async move {
        let Some(crd_res) =
            api.registry
                .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        else {
            return;
        };
        loop {
            let from = api.store.current_rev();
            if let Err(e) = sync(&api).await {
                tracing::warn!("CRD sync failed: {e}");
            }
            let Ok(mut w) = api.store.watch(&crd_res.prefix(), from).await else {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            };
            while w.next().await.is_ok() {
                if let Err(e) = sync(&api).await {
                    tracing::warn!("CRD sync failed: {e}");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_validation_prunes_and_reports() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1}, "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut causes = Vec::new();
        let mut unknown = Vec::new();
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"size": 0, "extra": 1, "free": {"any": 1}}});
        Validator {
            causes: &mut causes,
            unknown: &mut unknown,
        }
        .check(&schema, &mut obj, "", true);
        assert_eq!(unknown, vec!["spec.extra"]);
        assert!(obj["spec"].get("extra").is_none());
        assert_eq!(obj["spec"]["free"]["any"], 1);
        assert_eq!(obj["spec"]["mode"], "a");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.size");
        let mut causes = Vec::new();
        let mut bad = json!({"spec": {"size": "x", "mode": "c"}});
        Validator {
            causes: &mut causes,
            unknown: &mut Vec::new(),
        }
        .check(&schema, &mut bad, "", true);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.size", "spec.mode"]);
    }
}
