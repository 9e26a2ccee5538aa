//! Discovery: legacy (`/api`, `/apis`, per group/version) and aggregated (apidiscovery v2 and
//! v2beta1) documents, generated from the registry and merged with the group/versions that
//! APIServices delegate (`/apis/<group>/<version>` of those is proxied; the aggregated document
//! carries the backend's resources as last fetched by the aggregator).

use serde_json::{Value, json};

use super::Api;
use super::aggregator;
use super::registry::Resource;

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated discovery version the client accepts, if any (v2 preferred).
pub fn aggregated_accept(accept: &str) -> Option<&'static str> {
    let offers: Vec<String> = accept.split(',').map(|a| a.replace(' ', "")).collect();
    let wants = |v: &str| {
        offers.iter().any(|o| {
            o.contains("g=apidiscovery.k8s.io") && o.contains(&format!("v={v};"))
                || o.ends_with(&format!("v={v}")) && o.contains("apidiscovery")
        })
    };
    if wants("v2") {
        Some(AGGREGATED_V2)
    } else if wants("v2beta1") {
        Some(AGGREGATED_V2BETA1)
    } else {
        None
    }
}

pub fn api_versions(api: &Api) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.config.advertise_endpoint()}]})
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

/// The named groups and their versions (preferred first): the registry's, then the versions and
/// groups that APIServices delegate, by their priorities.
fn named_groups(api: &Api) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = api
        .registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect();
    for d in aggregator::delegated(api) {
        match groups.iter_mut().find(|(g, _)| *g == d.group) {
            Some((_, vs)) if !vs.contains(&d.version) => vs.push(d.version),
            Some(_) => {}
            None => groups.push((d.group, vec![d.version])),
        }
    }
    groups
}

pub fn api_group_list(api: &Api) -> Value {
    let groups: Vec<Value> = named_groups(api)
        .into_iter()
        .map(|(g, vs)| group_entry(&g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(api: &Api, group: &str) -> Option<Value> {
    named_groups(api)
        .into_iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut e = group_entry(&g, &vs);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

fn resources_in(api: &Api, group: &str, version: &str) -> Vec<std::sync::Arc<Resource>> {
    api.registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}

pub fn resource_list(api: &Api, group: &str, version: &str) -> Option<Value> {
    let rs = resources_in(api, group, version);
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in &rs {
        let mut e = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs()});
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for s in &r.subresources {
            let mut se = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "", "namespaced": r.namespaced, "kind": s.kind, "verbs": s.verbs});
            if s.group != r.group || s.version != r.version {
                se["group"] = json!(s.group);
                se["version"] = json!(s.version);
            }
            out.push(se);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

/// A backend's APIResourceList in the aggregated form (subresources under their resource).
fn from_resource_list(group: &str, version: &str, list: &Value) -> Vec<Value> {
    let items = list["resources"].as_array().cloned().unwrap_or_default();
    let kind_of = |r: &Value| {
        json!({"group": r["group"].as_str().unwrap_or(group),
            "version": r["version"].as_str().unwrap_or(version), "kind": r["kind"]})
    };
    let mut out: Vec<Value> = items
        .iter()
        .filter(|r| r["name"].as_str().is_some_and(|n| !n.contains('/')))
        .map(|r| {
            let mut e = json!({
                "resource": r["name"],
                "responseKind": kind_of(r),
                "scope": if r["namespaced"].as_bool().unwrap_or(false) { "Namespaced" } else { "Cluster" },
                "singularResource": r["singularName"].as_str().unwrap_or_default(),
                "verbs": r.get("verbs").cloned().unwrap_or(json!([])),
            });
            for k in ["shortNames", "categories"] {
                if r[k].as_array().is_some_and(|a| !a.is_empty()) {
                    e[k] = r[k].clone();
                }
            }
            e
        })
        .collect();
    for r in &items {
        let Some((parent, sub)) = r["name"].as_str().and_then(|n| n.split_once('/')) else {
            continue;
        };
        if let Some(p) = out.iter_mut().find(|e| e["resource"] == parent) {
            let entry = json!({"subresource": sub, "responseKind": kind_of(r),
                "verbs": r.get("verbs").cloned().unwrap_or(json!([]))});
            match p["subresources"].as_array_mut() {
                Some(a) => a.push(entry),
                None => p["subresources"] = json!([entry]),
            }
        }
    }
    out
}

fn aggregated_group(api: &Api, group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let local = resources_in(api, group, v);
            if local.is_empty() {
                // Delegated: the backend's resources, stale until it has answered.
                return match aggregator::discovery_of(api, group, v) {
                    Some(list) => json!({"version": v, "resources": from_resource_list(group, v, &list), "freshness": "Current"}),
                    None => json!({"version": v, "resources": [], "freshness": "Stale"}),
                };
            }
            let resources: Vec<Value> = local
                .iter()
                .map(|r| {
                    let subs: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
                        .collect();
                    let mut e = json!({
                        "resource": r.plural,
                        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": r.verbs(),
                    });
                    if !r.short_names.is_empty() {
                        e["shortNames"] = json!(r.short_names);
                    }
                    if !r.categories.is_empty() {
                        e["categories"] = json!(r.categories);
                    }
                    if !subs.is_empty() {
                        e["subresources"] = json!(subs);
                    }
                    e
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs})
}

/// The aggregated document for `/api` (core only) or `/apis` (named groups).
pub fn aggregated(api: &Api, core: bool, content_type: &str) -> Value {
    let groups = if core {
        api.registry
            .groups()
            .into_iter()
            .filter(|(g, _)| g.is_empty())
            .collect()
    } else {
        named_groups(api)
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| aggregated_group(api, &g, &vs))
        .collect();
    let version = if content_type == AGGREGATED_V2 {
        "v2"
    } else {
        "v2beta1"
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl_133 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_accept(kubectl_133), Some(AGGREGATED_V2));
        let kubectl_128 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_accept(kubectl_128), Some(AGGREGATED_V2BETA1));
        assert_eq!(aggregated_accept("application/json, */*"), None);
    }

    #[test]
    fn backend_resource_lists_convert_to_aggregated_entries() {
        let list = json!({"kind": "APIResourceList", "groupVersion": "example.com/v1alpha1", "resources": [
            {"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget", "verbs": ["get", "list"], "shortNames": ["wd"]},
            {"name": "widgets/status", "singularName": "", "namespaced": true, "kind": "Widget", "verbs": ["get"]},
            {"name": "gadgets", "singularName": "gadget", "namespaced": false, "kind": "Gadget", "verbs": ["get"]}]});
        let out = from_resource_list("example.com", "v1alpha1", &list);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["resource"], "widgets");
        assert_eq!(out[0]["scope"], "Namespaced");
        assert_eq!(out[0]["shortNames"], json!(["wd"]));
        assert_eq!(
            out[0]["responseKind"],
            json!({"group": "example.com", "version": "v1alpha1", "kind": "Widget"})
        );
        assert_eq!(out[0]["subresources"][0]["subresource"], "status");
        assert_eq!(out[1]["scope"], "Cluster");
        assert!(out[1].get("subresources").is_none());
    }
}
