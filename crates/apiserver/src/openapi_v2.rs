//! `/openapi/v2`: the Swagger 2.0 definitions, encoded as gnostic's OpenAPIv2 protobuf
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), which kubectl up to 1.28
//! reads for `explain` and patch metadata. Field numbers follow gnostic's OpenAPIv2.proto.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::Api;
use super::admission::schema::{REF_PREFIX, definitions};

#[derive(Default)]
pub struct Cache {
    doc: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

/// Protobuf writer for the few wire shapes this document needs.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn bytes(&mut self, tag: u32, b: &[u8]) {
        self.varint(((tag as u64) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(tag, s.as_bytes());
        }
    }
    fn message(&mut self, tag: u32, m: Pb) {
        self.bytes(tag, &m.0);
    }
    fn int(&mut self, tag: u32, v: i64) {
        self.varint((tag as u64) << 3);
        self.varint(v as u64);
    }
    fn double(&mut self, tag: u32, v: f64) {
        self.varint(((tag as u64) << 3) | 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// gnostic `Any { yaml = 2 }`.
fn any(v: &Value) -> Pb {
    let mut p = Pb::default();
    p.string(2, serde_yaml::to_string(v).unwrap_or_default().trim_end());
    p
}

fn named_any(name: &str, v: &Value) -> Pb {
    let mut p = Pb::default();
    p.string(1, name);
    p.message(2, any(v));
    p
}

fn v2_ref(r: &str) -> String {
    format!("#/definitions/{}", r.strip_prefix(REF_PREFIX).unwrap_or(r))
}

fn schema(s: &Value) -> Pb {
    let mut p = Pb::default();
    // `allOf: [{$ref}]` plus a description is a reference with a description in Swagger 2.0.
    let single_ref = s
        .get("allOf")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 1)
        .and_then(|a| a[0].get("$ref"))
        .and_then(Value::as_str);
    if let Some(r) = s.get("$ref").and_then(Value::as_str).or(single_ref) {
        p.string(1, &v2_ref(r));
    }
    let st = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
    p.string(2, st("format"));
    p.string(3, st("title"));
    p.string(4, st("description"));
    if let Some(d) = s.get("default") {
        p.message(5, any(d));
    }
    for (tag, key) in [(7, "maximum"), (9, "minimum")] {
        if let Some(n) = s.get(key).and_then(Value::as_f64) {
            p.double(tag, n);
        }
    }
    for (tag, key) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ] {
        if let Some(n) = s.get(key).and_then(Value::as_i64) {
            p.int(tag, n);
        }
    }
    p.string(13, st("pattern"));
    for r in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        p.string(19, r);
    }
    for e in s
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        p.message(20, any(e));
    }
    match s.get("additionalProperties") {
        Some(Value::Object(_)) => {
            let mut ap = Pb::default();
            ap.message(1, schema(&s["additionalProperties"]));
            p.message(21, ap);
        }
        Some(Value::Bool(b)) => {
            let mut ap = Pb::default();
            ap.int(2, *b as i64);
            p.message(21, ap);
        }
        _ => {}
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let mut ti = Pb::default();
        ti.string(1, t);
        p.message(22, ti);
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        let mut ii = Pb::default();
        ii.message(1, schema(items));
        p.message(23, ii);
    }
    if single_ref.is_none() {
        for a in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            p.message(24, schema(a));
        }
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut pp = Pb::default();
        for (name, ps) in props {
            let mut named = Pb::default();
            named.string(1, name);
            named.message(2, schema(ps));
            pp.message(1, named);
        }
        p.message(25, pp);
    }
    if let Some(m) = s.as_object() {
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            p.message(31, named_any(k, v));
        }
    }
    p
}

/// All definitions, with every served kind tagged by its group/version/kind.
fn all_definitions(api: &Api) -> Vec<(String, Value)> {
    let mut defs: std::collections::BTreeMap<String, Value> = definitions()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for r in api
        .registry
        .all()
        .iter()
        .filter(|r| !r.create_only && !r.computed)
    {
        let name = r.definition_name();
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let entry = match (&r.custom, defs.get_mut(&name)) {
            (Some(c), _) => defs
                .entry(name)
                .or_insert_with(|| c.schema.clone().unwrap_or(json!({"type": "object"}))),
            (None, Some(d)) => d,
            (None, None) => continue,
        };
        let list = entry.as_object_mut().map(|m| {
            m.entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| json!([]))
        });
        if let Some(Value::Array(a)) = list
            && !a.contains(&gvk)
        {
            a.push(gvk);
        }
    }
    defs.into_iter().collect()
}

/// The protobuf document, cached per registry generation.
pub fn document(api: &Api) -> Arc<Vec<u8>> {
    let generation = api.registry.generation();
    if let Some((g, doc)) = api
        .openapi_v2
        .doc
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        && *g == generation
    {
        return doc.clone();
    }
    let mut doc = Pb::default();
    doc.string(1, "2.0");
    let mut info = Pb::default();
    info.string(1, "Kubernetes");
    info.string(2, kinglet_core::K8S_GIT_VERSION);
    doc.message(2, info);
    doc.message(8, Pb::default());
    let mut defs = Pb::default();
    for (name, s) in all_definitions(api) {
        let mut named = Pb::default();
        named.string(1, &name);
        named.message(2, schema(&s));
        defs.message(1, named);
    }
    doc.message(9, defs);
    let body = Arc::new(doc.0);
    *api.openapi_v2.doc.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((generation, body.clone()));
    body
}

/// The same definitions as Swagger 2.0 JSON, for clients that ask for JSON.
pub fn json_document(api: &Api) -> Value {
    let mut defs = serde_json::Map::new();
    for (name, s) in all_definitions(api) {
        let text = s.to_string().replace(REF_PREFIX, "#/definitions/");
        defs.insert(name, serde_json::from_str(&text).unwrap_or(s));
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": kinglet_core::K8S_GIT_VERSION}, "paths": {}, "definitions": defs})
}
