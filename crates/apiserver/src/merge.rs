//! Schema-aware merging: strategic merge patch, server-side apply merges and the field sets
//! behind `managedFields`. List semantics (map with keys, set, atomic) come from upstream's
//! list-type metadata (`list_types.rs`); objects without a schema merge lists atomically.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::admission::schema::{REF_PREFIX, definitions};
use super::list_types::LIST_TYPES;

#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    Map(Vec<String>),
    Set,
    Atomic,
}

/// A position in a schema: the definition it belongs to, if known.
#[derive(Clone, Copy)]
pub struct Shape<'a> {
    def: Option<&'a str>,
    schema: Option<&'a Value>,
}

impl<'a> Shape<'a> {
    pub fn none() -> Shape<'static> {
        Shape {
            def: None,
            schema: None,
        }
    }

    /// The shape of a definition (`io.k8s.api.apps.v1.Deployment`).
    pub fn of_definition(name: &str) -> Shape<'static> {
        match definitions().get_key_value(name) {
            Some((k, v)) => Shape {
                def: Some(k.as_str()),
                schema: Some(v),
            },
            None => Shape::none(),
        }
    }

    /// The shape of an arbitrary schema value (a CRD's openAPIV3Schema).
    pub fn of_schema(schema: &'a Value) -> Shape<'a> {
        Shape {
            def: None,
            schema: Some(schema),
        }
        .resolved()
    }

    fn resolved(self) -> Shape<'a> {
        let mut cur = self;
        for _ in 0..16 {
            let Some(s) = cur.schema else { return cur };
            if let Some(name) = s
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                match definitions().get_key_value(name) {
                    Some((k, v)) => {
                        cur = Shape {
                            def: Some(k.as_str()),
                            schema: Some(v),
                        }
                    }
                    None => return Shape::none(),
                }
            } else if let Some(a) = s
                .get("allOf")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
            {
                cur = Shape {
                    def: cur.def,
                    schema: Some(&a[0]),
                };
            } else {
                return cur;
            }
        }
        cur
    }

    pub fn field(&self, name: &str) -> Shape<'a> {
        let Some(s) = self.schema else {
            return Shape::none();
        };
        let child = s
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
        Shape {
            def: None,
            schema: child,
        }
        .resolved()
    }

    pub fn items(&self) -> Shape<'a> {
        Shape {
            def: None,
            schema: self.schema.and_then(|s| s.get("items")),
        }
        .resolved()
    }

    /// Whether this is a map with arbitrary keys (labels, data) rather than a struct.
    pub fn is_map(&self) -> bool {
        self.schema.is_some_and(|s| {
            s.get("additionalProperties").is_some_and(Value::is_object)
                && s.get("properties").is_none()
        })
    }

    /// How the list in `field` merges.
    pub fn list_type(&self, field: &str) -> ListType {
        if let Some(def) = self.def {
            let lo = LIST_TYPES.partition_point(|(d, f, _, _)| (*d, *f) < (def, field));
            if let Some((d, f, kind, keys)) = LIST_TYPES.get(lo)
                && *d == def
                && *f == field
            {
                return match *kind {
                    "map" => ListType::Map(keys.iter().map(|k| k.to_string()).collect()),
                    "set" => ListType::Set,
                    _ => ListType::Atomic,
                };
            }
        }
        // CRD schemas carry the extensions themselves.
        let fs = self.field(field);
        match fs
            .schema
            .and_then(|s| s.get("x-kubernetes-list-type"))
            .and_then(Value::as_str)
        {
            Some("map") => ListType::Map(
                fs.schema
                    .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Some("set") => ListType::Set,
            _ => ListType::Atomic,
        }
    }
}

fn key_of(item: &Value, keys: &[String]) -> Option<Vec<Value>> {
    let k: Vec<Value> = keys
        .iter()
        .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
        .collect();
    (!k.iter().all(Value::is_null)).then_some(k)
}

/// An item's identity as a hashable string: its merge key in a map list, else itself. Lists
/// are matched through these in hash maps, as scanning made long lists quadratic (4k
/// containers patched onto 4k took three minutes in a debug build).
fn identity(item: &Value, lt: &ListType) -> Option<String> {
    match lt {
        ListType::Map(keys) => key_of(item, keys).map(|k| Value::Array(k).to_string()),
        _ => Some(item.to_string()),
    }
}

/// Applies a strategic merge patch to `original`.
pub fn strategic_merge(original: &Value, patch: &Value, shape: Shape) -> Result<Value, String> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => merge_object(o, p, shape).map(Value::Object),
        (_, Value::Object(p)) => merge_object(&Map::new(), p, shape).map(Value::Object),
        (_, p) => Ok(p.clone()),
    }
}

fn merge_object(
    orig: &Map<String, Value>,
    patch: &Map<String, Value>,
    shape: Shape,
) -> Result<Map<String, Value>, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            return Ok(m);
        }
        Some("delete") => return Ok(Map::new()),
        Some("merge") | None => {}
        Some(other) => return Err(format!("Unknown patch type: {other}")),
    }
    let mut out = orig.clone();
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: HashSet<&str> = retain
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(k.as_str()));
    }
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: HashSet<String> = pv
                .as_array()
                .ok_or("$deleteFromPrimitiveList must be a list")?
                .iter()
                .map(Value::to_string)
                .collect();
            if let Some(Value::Array(a)) = out.get_mut(field) {
                a.retain(|v| !remove.contains(&v.to_string()));
            }
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let child = shape.field(k);
        let merged = match (out.get(k), pv) {
            (Some(Value::Object(o)), Value::Object(p)) => Value::Object(merge_object(o, p, child)?),
            (None, Value::Object(p)) => Value::Object(merge_object(&Map::new(), p, child)?),
            (Some(Value::Array(o)), Value::Array(p)) => {
                Value::Array(merge_list(o, p, shape.list_type(k), child.items())?)
            }
            (None, Value::Array(p)) => {
                Value::Array(merge_list(&[], p, shape.list_type(k), child.items())?)
            }
            _ => pv.clone(),
        };
        out.insert(k.clone(), merged);
    }
    for (k, order) in patch
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("$setElementOrder/").map(|f| (f, v)))
    {
        if let (Some(Value::Array(list)), Some(order)) = (out.get_mut(k), order.as_array()) {
            reorder(list, order, shape.list_type(k));
        }
    }
    Ok(out)
}

fn reorder(list: &mut [Value], order: &[Value], lt: ListType) {
    let mut pos = HashMap::new();
    for (i, o) in order.iter().enumerate() {
        if let Some(id) = identity(o, &lt) {
            pos.entry(id).or_insert(i);
        }
    }
    list.sort_by_cached_key(|v| {
        identity(v, &lt)
            .and_then(|id| pos.get(&id).copied())
            .unwrap_or(usize::MAX)
    });
}

fn merge_list(
    orig: &[Value],
    patch: &[Value],
    lt: ListType,
    item_shape: Shape,
) -> Result<Vec<Value>, String> {
    match lt {
        ListType::Map(keys) if !keys.is_empty() => {
            // A list-level `$patch: replace` item replaces the whole list.
            if patch.iter().any(|p| {
                p.get("$patch").and_then(Value::as_str) == Some("replace")
                    && key_of(p, &keys).is_none()
            }) {
                return Ok(patch
                    .iter()
                    .filter(|p| p.get("$patch").is_none())
                    .cloned()
                    .collect());
            }
            let lt = ListType::Map(keys.clone());
            // Deleted items become None until the end, so positions stay valid.
            let mut out: Vec<Option<Value>> = orig.iter().cloned().map(Some).collect();
            let mut index: HashMap<String, usize> = HashMap::new();
            for (i, o) in orig.iter().enumerate() {
                if let Some(id) = identity(o, &lt) {
                    index.entry(id).or_insert(i);
                }
            }
            for p in patch {
                let Some(id) = identity(p, &lt) else {
                    return Err(format!("map list item lacks its merge key(s) {keys:?}"));
                };
                let idx = index.get(&id).copied();
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = idx {
                        out[i] = None;
                        index.remove(&id);
                    }
                    continue;
                }
                match idx.and_then(|i| out[i].as_ref().map(|o| (i, o))) {
                    Some((i, o)) => out[i] = Some(strategic_merge(o, p, item_shape)?),
                    None => {
                        index.insert(id, out.len());
                        out.push(Some(strategic_merge(&Value::Null, p, item_shape)?));
                    }
                }
            }
            Ok(out.into_iter().flatten().collect())
        }
        ListType::Set => {
            let mut seen: HashSet<String> = orig.iter().map(Value::to_string).collect();
            let mut out = orig.to_vec();
            for p in patch {
                if seen.insert(p.to_string()) {
                    out.push(p.clone());
                }
            }
            Ok(out)
        }
        _ => Ok(patch.to_vec()),
    }
}

/// One step in a field path (FieldsV1 element).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    Field(String),
    Key(String),
    Value(String),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Elem::Field(f) => format!("f:{f}"),
            Elem::Key(k) => format!("k:{k}"),
            Elem::Value(v) => format!("v:{v}"),
        }
    }
    fn decode(s: &str) -> Option<Elem> {
        let (p, rest) = s.split_once(':')?;
        Some(match p {
            "f" => Elem::Field(rest.into()),
            "k" => Elem::Key(rest.into()),
            "v" => Elem::Value(rest.into()),
            "i" => Elem::Value(format!("i{rest}")),
            _ => return None,
        })
    }
}

pub type Path = Vec<Elem>;

fn key_json(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m).to_string()
}

/// Every leaf path of `v` (and the node paths of list items and maps).
pub fn leaf_paths(v: &Value, shape: Shape, prefix: &mut Path, out: &mut Vec<Path>) {
    walk(v, shape, prefix, &mut |p, _| out.push(p.clone()));
}

/// The paths `leaf_paths` finds, with the value at each (the first, for duplicate keys):
/// looking paths up here is linear in the object, where finding each in its list is not.
pub fn leaf_values<'v>(v: &'v Value, shape: Shape) -> HashMap<Path, &'v Value> {
    let mut out = HashMap::new();
    walk(v, shape, &mut Vec::new(), &mut |p, val| {
        out.entry(p.clone()).or_insert(val);
    });
    out
}

fn walk<'v>(v: &'v Value, shape: Shape, prefix: &mut Path, out: &mut dyn FnMut(&Path, &'v Value)) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            if shape.is_map() || prefix.last().is_some_and(|e| matches!(e, Elem::Key(_))) {
                out(prefix, v);
            }
            for (k, cv) in m {
                prefix.push(Elem::Field(k.clone()));
                let child = shape.field(k);
                match (cv, shape.list_type(k)) {
                    (Value::Array(items), ListType::Map(keys)) if !keys.is_empty() => {
                        for it in items {
                            prefix.push(Elem::Key(key_json(it, &keys)));
                            walk(it, child.items(), prefix, out);
                            prefix.pop();
                        }
                    }
                    (Value::Array(items), ListType::Set) => {
                        for it in items {
                            prefix.push(Elem::Value(it.to_string()));
                            out(prefix, it);
                            prefix.pop();
                        }
                    }
                    _ => walk(cv, child, prefix, out),
                }
                prefix.pop();
            }
        }
        _ => out(prefix, v),
    }
}

/// Removes the values at `paths`, in one walk of `v` (removing them one at a time scanned a
/// list once per path: a minute for an apply dropping 4k env entries, in a debug build).
pub fn remove_paths(v: &mut Value, shape: Shape, paths: &[&Path]) {
    let set: HashSet<Path> = paths
        .iter()
        .map(|p| p.iter().map(canonical).collect())
        .collect();
    remove_walk(v, shape, &mut Vec::new(), &set, &[]);
}

/// A path element with its JSON spelled one way (keys sorted, no spaces), so the paths of
/// stored managedFields match the ones a walk builds.
fn canonical(e: &Elem) -> Elem {
    let canon = |s: &str| match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => {
            let sorted: std::collections::BTreeMap<_, _> = m.into_iter().collect();
            Value::Object(sorted.into_iter().collect()).to_string()
        }
        Ok(v) => v.to_string(),
        Err(_) => s.to_string(),
    };
    match e {
        Elem::Key(k) => Elem::Key(canon(k)),
        Elem::Value(v) => Elem::Value(canon(v)),
        f => f.clone(),
    }
}

/// `keys`: the merge keys when `v` is a list item; an item that stays keeps them.
fn remove_walk(
    v: &mut Value,
    shape: Shape,
    prefix: &mut Path,
    paths: &HashSet<Path>,
    keys: &[String],
) {
    let Value::Object(m) = v else { return };
    let mut gone = HashSet::new();
    for (k, cv) in m.iter_mut() {
        prefix.push(Elem::Field(k.clone()));
        if paths.contains(prefix) && !keys.contains(k) {
            gone.insert(k.clone());
        } else {
            let child = shape.field(k);
            match (cv, shape.list_type(k)) {
                (Value::Array(items), ListType::Map(keys)) if !keys.is_empty() => {
                    items.retain_mut(|it| {
                        prefix.push(canonical(&Elem::Key(key_json(it, &keys))));
                        let keep = !paths.contains(prefix);
                        if keep {
                            remove_walk(it, child.items(), prefix, paths, &keys);
                        }
                        prefix.pop();
                        keep
                    })
                }
                (Value::Array(items), ListType::Set) => items.retain(|it| {
                    prefix.push(canonical(&Elem::Value(it.to_string())));
                    let keep = !paths.contains(prefix);
                    prefix.pop();
                    keep
                }),
                (cv, _) => remove_walk(cv, child, prefix, paths, &[]),
            }
        }
        prefix.pop();
    }
    m.retain(|k, _| !gone.contains(k));
}

/// Encodes a set of paths as FieldsV1.
pub fn to_fields_v1(paths: &[Path]) -> Value {
    let set: HashSet<&Path> = paths.iter().collect();
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for e in p {
            let entry = cur
                .entry(e.encode())
                .or_insert_with(|| Value::Object(Map::new()));
            cur = entry.as_object_mut().expect("object");
        }
        if !p.is_empty() && !cur.is_empty() {
            cur.insert(".".into(), Value::Object(Map::new()));
        }
    }
    // A node that is both a path and has children carries ".".
    fn mark(paths: &HashSet<&Path>, prefix: &mut Path, m: &mut Map<String, Value>) {
        if !prefix.is_empty() && paths.contains(prefix) && !m.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, v) in m.iter_mut() {
            if k == "." {
                continue;
            }
            if let (Some(e), Some(child)) = (Elem::decode(k), v.as_object_mut()) {
                prefix.push(e);
                mark(paths, prefix, child);
                prefix.pop();
            }
        }
    }
    mark(&set, &mut Vec::new(), &mut root);
    Value::Object(root)
}

/// Decodes FieldsV1 into paths (leaves and "." nodes).
pub fn from_fields_v1(v: &Value) -> Vec<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut Vec<Path>) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            out.push(prefix.clone());
            return;
        }
        for (k, child) in m {
            if k == "." {
                out.push(prefix.clone());
                continue;
            }
            if let Some(e) = Elem::decode(k) {
                prefix.push(e);
                walk(child, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Shape<'static> {
        Shape::of_definition("io.k8s.api.core.v1.Pod")
    }

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "app", "image": "v1", "env": [{"name": "A", "value": "1"}]}, {"name": "side", "image": "s"}]}});
        let patch = json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"containers": [{"name": "app", "image": "v2", "env": [{"name": "B", "value": "2"}]}, {"name": "side", "$patch": "delete"}]}});
        let out = strategic_merge(&orig, &patch, pod()).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        let cs = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["image"], "v2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
        // Tolerations are atomic: replaced whole.
        let o = json!({"spec": {"tolerations": [{"key": "a"}]}});
        let r =
            strategic_merge(&o, &json!({"spec": {"tolerations": [{"key": "b"}]}}), pod()).unwrap();
        assert_eq!(r["spec"]["tolerations"], json!([{"key": "b"}]));
        let r = strategic_merge(
            &o,
            &json!({"spec": {"$patch": "replace", "containers": []}}),
            pod(),
        )
        .unwrap();
        assert_eq!(r["spec"], json!({"containers": []}));
        let r = strategic_merge(
            &orig,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
            pod(),
        )
        .unwrap();
        assert_eq!(r["metadata"]["finalizers"], json!([]));
        assert!(
            strategic_merge(
                &orig,
                &json!({"spec": {"containers": [{"image": "nokey"}]}}),
                pod()
            )
            .is_err()
        );
    }

    #[test]
    fn fields_round_trip() {
        let obj = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let mut paths = Vec::new();
        leaf_paths(&obj, pod(), &mut Vec::new(), &mut paths);
        let f = to_fields_v1(&paths);
        assert_eq!(f["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert!(f["f:metadata"]["f:labels"].get(".").is_some());
        assert!(
            f["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]
                .get(".")
                .is_some()
        );
        let mut back = from_fields_v1(&f);
        back.sort();
        paths.sort();
        assert_eq!(back, paths);
        let p = &paths.iter().find(|p| p.len() == 4).unwrap();
        assert_eq!(leaf_values(&obj, pod())[*p], "i");
    }
}
