//! Built-in objects as upstream's Go types encode them, applied when an object is written so
//! that what is stored and answered matches upstream:
//! - `omitempty` maps and lists that are empty (or null) are left out (`labels: {}`,
//!   `annotations: {}`, `data: {}`, `ports: []`), except the few collection fields whose Go json
//!   tag has no `omitempty`;
//! - fields Go always writes are present: non-pointer struct fields (`status: {}`,
//!   `status.loadBalancer: {}`, `resources: {}`) and scalars without `omitempty` (a
//!   StatefulSet's `status.replicas: 0`), with their zero value.
//!
//! Both rules come from `go_fields.tsv`: one line per (OpenAPI definition, field, what), `keep`
//! for a collection without `omitempty`, else the zero value Go writes. It was derived
//! mechanically from the Go types (`k8s.io/api` `*/v1/types.go` and `autoscaling/v2`,
//! apimachinery `meta/v1`, apiextensions-apiserver and kube-aggregator `v1`): slice and map
//! fields whose tag lacks `omitempty`; non-pointer struct fields (except those that encode as
//! scalars: Time, MicroTime, Duration, Quantity, IntOrString, RawExtension, JSON, FieldsV1) and
//! non-pointer string, bool and number fields without `omitempty` or `omitzero`. List kinds and
//! groups kinglet does not store are left out. Which fields are maps or lists is read from the
//! kinds' OpenAPI schemas. Custom resources keep what their schema keeps, as upstream's
//! unstructured objects do.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::admission::schema::{REF_PREFIX, definitions};
use crate::registry::Resource;

/// The Go encoding rules of the built-in definitions, from `go_fields.tsv`.
struct Rules {
    /// (definition, field) of collections written even when empty.
    keep: HashSet<(&'static str, &'static str)>,
    /// Per definition: fields always written, with their zero value.
    always: HashMap<&'static str, Vec<(&'static str, Value)>>,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut r = Rules {
            keep: HashSet::new(),
            always: HashMap::new(),
        };
        for line in include_str!("go_fields.tsv").lines() {
            let mut cols = line.split('\t');
            let (Some(def), Some(field), Some(what)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            if what == "keep" {
                r.keep.insert((def, field));
            } else if let Ok(zero) = serde_json::from_str(what) {
                r.always.entry(def).or_default().push((field, zero));
            }
        }
        r
    })
}

/// Deep enough for any built-in object; bounds recursion on hostile input.
const MAX_DEPTH: usize = 64;

/// Makes a built-in object look as upstream's Go types would encode it (see the module doc).
/// Custom resources and kinds without a schema are left as they are.
pub fn normalize(res: &Resource, obj: &mut Value) {
    if res.is_custom() || res.schema.is_none() {
        return;
    }
    let def = res.definition_name();
    if definitions().contains_key(&def) {
        walk_struct(&def, obj, 0);
    }
}

/// The definition a property schema refers to (`$ref`, or `allOf: [{$ref}]`), if any.
fn ref_name(schema: &Value) -> Option<&str> {
    let r = schema.get("$ref").or_else(|| {
        schema
            .get("allOf")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 1)
            .and_then(|a| a[0].get("$ref"))
    })?;
    r.as_str()?.strip_prefix(REF_PREFIX)
}

/// The schema a property schema stands for, following its reference.
fn resolved(schema: &Value) -> &Value {
    ref_name(schema)
        .and_then(|n| definitions().get(n))
        .unwrap_or(schema)
}

/// Whether a schema is a Go map (an object with only `additionalProperties`).
fn is_map(schema: &Value) -> bool {
    schema
        .get("additionalProperties")
        .is_some_and(Value::is_object)
        && schema.get("properties").is_none()
}

fn is_list(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("array")
}

/// Normalizes `v`, an object of definition `def`.
fn walk_struct(def: &str, v: &mut Value, depth: usize) {
    let Some(schema) = definitions().get(def) else {
        return;
    };
    let Value::Object(m) = v else {
        return;
    };
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let r = rules();
    if let Some(fields) = r.always.get(def) {
        // Only fields this API version has (newer upstream types may have more).
        for (field, zero) in fields.iter().filter(|(f, _)| props.contains_key(*f)) {
            if m.get(*field).is_none_or(Value::is_null) {
                m.insert((*field).to_string(), zero.clone());
            }
        }
    }
    m.retain(|k, child| match props.get(k) {
        Some(ps) => r.keep.contains(&(def, k.as_str())) || !omitted(resolved(ps), child),
        None => true,
    });
    if depth < MAX_DEPTH {
        for (k, child) in m.iter_mut() {
            if let Some(ps) = props.get(k) {
                walk_value(ps, child, depth + 1);
            }
        }
    }
}

/// Whether Go leaves out a field holding `v`: null, or an empty map or list.
fn omitted(schema: &Value, v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty() && is_list(schema),
        Value::Object(o) => o.is_empty() && is_map(schema),
        _ => false,
    }
}

/// Normalizes a field value of schema `schema`: a struct, or the items of a list or map.
fn walk_value(schema: &Value, v: &mut Value, depth: usize) {
    if let Some(name) = ref_name(schema) {
        let resolved = definitions().get(name);
        // A definition that is itself a list or map (none today) has no fields of its own.
        if resolved.is_some_and(|s| !is_list(s) && !is_map(s)) {
            walk_struct(name, v, depth);
            return;
        }
    }
    let schema = resolved(schema);
    match v {
        Value::Array(items) if is_list(schema) => {
            if let Some(item) = schema.get("items") {
                for i in items {
                    walk_value(item, i, depth + 1);
                }
            }
        }
        Value::Object(entries) if is_map(schema) => {
            if let Some(item) = schema.get("additionalProperties") {
                walk_map(item, entries, depth + 1);
            }
        }
        _ => {}
    }
}

fn walk_map(item: &Value, entries: &mut Map<String, Value>, depth: usize) {
    if depth < MAX_DEPTH {
        for v in entries.values_mut() {
            walk_value(item, v, depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtins;
    use serde_json::json;

    fn res(group: &str, plural: &str) -> Resource {
        builtins()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural)
            .expect("resource")
    }

    #[test]
    fn empty_omitempty_maps_and_lists_are_dropped() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {}, "annotations": {}, "finalizers": []},
            "data": {}, "binaryData": {"k": "dg=="}});
        normalize(&res("", "configmaps"), &mut cm);
        assert_eq!(
            cm,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
                "binaryData": {"k": "dg=="}})
        );
    }

    #[test]
    fn collections_without_omitempty_and_empty_structs_stay() {
        let mut role = json!({"metadata": {"name": "r"}, "rules": [{"verbs": [], "apiGroups": [], "resources": ["pods"]}]});
        normalize(&res("rbac.authorization.k8s.io", "roles"), &mut role);
        assert_eq!(
            role,
            json!({"metadata": {"name": "r"}, "rules": [{"verbs": [], "resources": ["pods"]}]})
        );
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "securityContext": {}, "nodeSelector": {}, "volumes": [{"name": "v", "emptyDir": {}}]}});
        normalize(&res("", "pods"), &mut pod);
        assert_eq!(
            pod,
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "securityContext": {},
                "volumes": [{"name": "v", "emptyDir": {}}]}, "status": {}})
        );
    }

    #[test]
    fn fields_go_always_writes_are_present() {
        let mut sts = json!({"metadata": {"name": "s"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        normalize(&res("apps", "statefulsets"), &mut sts);
        assert_eq!(
            sts["status"],
            json!({"replicas": 0, "availableReplicas": 0})
        );
        assert_eq!(sts["spec"]["serviceName"], "");
        assert_eq!(sts["spec"]["updateStrategy"], json!({}));
        assert_eq!(sts["spec"]["template"]["metadata"], json!({}));
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({})
        );
        let mut svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        normalize(&res("", "services"), &mut svc);
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));
    }

    #[test]
    fn custom_resources_are_left_alone() {
        let mut r = res("", "configmaps");
        r.custom = Some(Default::default());
        let mut cr = json!({"metadata": {"labels": {}}, "spec": {"list": []}});
        let before = cr.clone();
        normalize(&r, &mut cr);
        assert_eq!(cr, before);
    }

    #[test]
    fn every_rule_names_a_known_field() {
        // The table is keyed by OpenAPI definition names: a rule whose definition is served
        // must name one of its properties, or a renamed definition would silently do nothing.
        let defs = definitions();
        let r = rules();
        let named = r.keep.iter().copied().chain(
            r.always
                .iter()
                .flat_map(|(d, f)| f.iter().map(|(f, _)| (*d, *f))),
        );
        let mut served = 0;
        let mut unknown = Vec::new();
        for (def, field) in named {
            if let Some(d) = defs.get(def) {
                served += 1;
                if d.pointer(&format!("/properties/{field}")).is_none() {
                    unknown.push(format!("{def}.{field}"));
                }
            }
        }
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(served > 100, "{served}");
    }
}
