//! OpenAPI v3 documents per group/version, generated from the registry and the built-in
//! schemas, so `kubectl explain` and kubectl's validation and patch logic work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use super::Api;
use super::admission::schema::{REF_PREFIX, definitions};
use super::registry::Resource;

/// A rendered document and its hash.
#[derive(Clone)]
pub struct Doc {
    pub body: Arc<Vec<u8>>,
    pub hash: String,
}

#[derive(Default)]
pub struct Cache {
    docs: Mutex<HashMap<String, (u64, Doc)>>,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of per-group/version documents.
pub fn index(api: &Api) -> Value {
    let mut paths = Map::new();
    for (g, vs) in api.registry.groups() {
        for v in vs {
            let p = gv_path(&g, &v);
            if let Some(doc) = document(api, &p) {
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", doc.hash)}),
                );
            }
        }
    }
    json!({"paths": paths})
}

/// The document for `api/v1` or `apis/<group>/<version>`, cached per registry generation.
pub fn document(api: &Api, gv: &str) -> Option<Doc> {
    let generation = api.registry.generation();
    if let Some((g, doc)) = api
        .openapi
        .docs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(gv)
        && *g == generation
    {
        return Some(doc.clone());
    }
    let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let resources: Vec<Arc<Resource>> = api
        .registry
        .all()
        .into_iter()
        // Computed resources (metrics.k8s.io) publish no schema, as aggregated APIs may not.
        .filter(|r| r.group == group && r.version == version && !r.computed)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let value = build(&resources, &gv_path(&group, &version));
    let body = serde_json::to_vec(&value).ok()?;
    let hash = Sha512::digest(&body)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();
    let doc = Doc {
        body: Arc::new(body),
        hash,
    };
    api.openapi
        .docs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(gv.to_string(), (generation, doc.clone()));
    Some(doc)
}

fn param(name: &str, location: &str, desc: &str) -> Value {
    json!({"name": name, "in": location, "description": desc, "schema": {"type": "string", "uniqueItems": true}})
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn op(
    r: &Resource,
    action: &str,
    id: &str,
    schema_ref: &str,
    params: Vec<Value>,
    body: Option<Vec<&str>>,
) -> Value {
    let content = |types: &[&str], sref: &str| {
        let mut m = Map::new();
        for t in types {
            m.insert(
                t.to_string(),
                json!({"schema": {"$ref": format!("{REF_PREFIX}{sref}")}}),
            );
        }
        Value::Object(m)
    };
    let mut o = json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": content(&["application/json", "application/yaml"], schema_ref)}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    });
    if let Some(types) = body {
        let sref = if action == "patch" {
            "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
        } else {
            schema_ref
        };
        o["requestBody"] = json!({"content": content(&types, sref), "required": true});
    }
    o
}

fn write_params() -> Vec<Value> {
    vec![
        param(
            "dryRun",
            "query",
            "When present, indicates that modifications should not be persisted.",
        ),
        param(
            "fieldManager",
            "query",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        param(
            "fieldValidation",
            "query",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
        ),
    ]
}

fn build(resources: &[Arc<Resource>], gv: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    let mut roots: Vec<String> = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".into(),
        "io.k8s.api.autoscaling.v1.Scale".into(),
    ];
    for r in resources {
        let def = r.definition_name();
        if let Some(custom) = &r.custom {
            let mut s = custom
                .schema
                .clone()
                .unwrap_or(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
            if let Some(props) = s
                .as_object_mut()
                .map(|m| m.entry("properties").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
            {
                props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                props.insert("metadata".into(), json!({"allOf": [{"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")}], "description": "Standard object's metadata."}));
            }
            s["x-kubernetes-group-version-kind"] = json!([gvk(r)]);
            schemas.insert(def.clone(), s);
            roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into());
        } else {
            roots.push(def.clone());
        }
        let prefix = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let ns_param = param(
            "namespace",
            "path",
            "object name and auth scope, such as for teams and projects",
        );
        let name_param = param("name", "path", &format!("name of the {}", r.kind));
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        let scope_params = if r.namespaced {
            vec![ns_param.clone()]
        } else {
            vec![]
        };
        let kind = &r.kind;
        if r.create_only {
            paths.insert(base.clone(), json!({"post": op(r, "post", &format!("create{kind}"), &def, write_params(), Some(vec!["*/*"])), "parameters": scope_params}));
            continue;
        }
        let list_ref = format!("{def}List");
        paths.insert(
            base.clone(),
            json!({
                "get": op(r, "list", &format!("list{kind}"), &list_ref, vec![param("labelSelector", "query", ""), param("fieldSelector", "query", ""), param("limit", "query", ""), param("continue", "query", ""), param("watch", "query", "")], None),
                "post": op(r, "post", &format!("create{kind}"), &def, write_params(), Some(vec!["*/*"])),
                "delete": op(r, "deletecollection", &format!("deletecollection{kind}"), "io.k8s.apimachinery.pkg.apis.meta.v1.Status", vec![], None),
                "parameters": scope_params,
            }),
        );
        let mut patch_types = vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ];
        if !r.is_custom() {
            patch_types.push("application/strategic-merge-patch+json");
        }
        let mut patch_params = write_params();
        patch_params.push(param(
            "force",
            "query",
            "Force is going to \"force\" Apply requests.",
        ));
        let mut item_params = scope_params.clone();
        item_params.insert(0, name_param.clone());
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op(r, "get", &format!("read{kind}"), &def, vec![], None),
                "put": op(r, "put", &format!("replace{kind}"), &def, write_params(), Some(vec!["*/*"])),
                "patch": op(r, "patch", &format!("patch{kind}"), &def, patch_params.clone(), Some(patch_types.clone())),
                "delete": op(r, "delete", &format!("delete{kind}"), "io.k8s.apimachinery.pkg.apis.meta.v1.Status", vec![], None),
                "parameters": item_params,
            }),
        );
        for sub in &r.subresources {
            let (sref, ops): (String, &[&str]) = match sub.name.as_str() {
                "status" => (def.clone(), &["get", "put", "patch"]),
                "scale" => (
                    "io.k8s.api.autoscaling.v1.Scale".into(),
                    &["get", "put", "patch"],
                ),
                _ => continue,
            };
            let mut m = Map::new();
            for verb in ops {
                let (action, id) = match *verb {
                    "get" => ("get", format!("read{kind}{}", capitalize(&sub.name))),
                    "put" => ("put", format!("replace{kind}{}", capitalize(&sub.name))),
                    _ => ("patch", format!("patch{kind}{}", capitalize(&sub.name))),
                };
                let body = match *verb {
                    "put" => Some(vec!["*/*"]),
                    "patch" => Some(patch_types.clone()),
                    _ => None,
                };
                let mut o = op(
                    r,
                    action,
                    &id,
                    &sref,
                    if *verb == "get" {
                        vec![]
                    } else {
                        patch_params.clone()
                    },
                    body,
                );
                if sub.name == "scale" {
                    o["x-kubernetes-group-version-kind"] =
                        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
                }
                m.insert(verb.to_string(), o);
            }
            m.insert(
                "parameters".into(),
                json!(item_params_clone(&name_param, &scope_params)),
            );
            paths.insert(format!("{base}/{{name}}/{}", sub.name), Value::Object(m));
        }
    }
    // Built-in schemas: everything reachable from the roots.
    let defs = definitions();
    let mut todo = roots;
    while let Some(name) = todo.pop() {
        if schemas.contains_key(&name) && !name.ends_with("ObjectMeta") {
            continue;
        }
        let Some(s) = defs.get(&name) else { continue };
        collect_refs(s, &mut todo, &schemas);
        schemas.entry(name).or_insert_with(|| s.clone());
    }
    for r in resources.iter().filter(|r| !r.is_custom()) {
        if let Some(s) = schemas.get_mut(&r.definition_name()) {
            s["x-kubernetes-group-version-kind"] = json!([gvk(r)]);
        }
    }
    // Upstream marks subresource responses and list kinds too; lists are simple wrappers here.
    for r in resources.iter().filter(|r| !r.create_only && !r.computed) {
        let def = r.definition_name();
        schemas.insert(
            format!("{def}List"),
            json!({"type": "object", "required": ["items"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "items": {"type": "array", "items": {"allOf": [{"$ref": format!("{REF_PREFIX}{def}")}]}},
                "metadata": {"allOf": [{"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")}]}
            }, "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": r.list_kind()}]}),
        );
        if let Some(lm) = defs.get("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta") {
            schemas
                .entry("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta".into())
                .or_insert_with(|| lm.clone());
        }
    }
    schemas.insert("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(), json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}));
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": kinglet_core::K8S_GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}}},
        "security": [{"BearerToken": []}],
        "x-kinglet-group-version": gv,
    })
}

fn item_params_clone(name: &Value, scope: &[Value]) -> Vec<Value> {
    let mut v = vec![name.clone()];
    v.extend(scope.iter().cloned());
    v
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn collect_refs(v: &Value, out: &mut Vec<String>, have: &BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
                && !have.contains_key(r)
                && !out.iter().any(|o| o == r)
            {
                out.push(r.to_string());
            }
            m.values().for_each(|c| collect_refs(c, out, have));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out, have)),
        _ => {}
    }
}
