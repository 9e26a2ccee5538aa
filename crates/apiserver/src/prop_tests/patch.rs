//! Patches: JSON patch (RFC 6902), merge patch (RFC 7386), strategic merge patch and
//! server-side apply, applied to API-shaped objects the way PATCH applies them.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::generators::{json_object, json_value};
use super::{bounded, config};
use crate::context::Ctx;
use crate::merge::{Shape, strategic_merge};
use crate::registry::{Registry, Resource};
use crate::status::ApiResult;

fn resource(group: &str, version: &str, plural: &str) -> Arc<Resource> {
    Registry::new()
        .find(group, version, plural)
        .expect("a built-in resource")
}

/// Memory per byte of (object + patch), as for a JSON body.
const PATCH_FACTOR: usize = 64;

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

/// JSON pointers: into the generated objects, and malformed ones.
fn pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "/",
            "/metadata",
            "/metadata/name",
            "/metadata/labels",
            "/metadata/labels/app",
            "/metadata/labels/a~1b",
            "/metadata/finalizers/-",
            "/spec",
            "/spec/0",
            "/spec/-",
            "/spec/containers/0/image",
            "/data",
            "/data/-",
            "/data/0",
            "/data/01",
            "/data/-1",
            "/data/99999999999999999999",
            "/a~2",
            "/~",
            "metadata",
            "/data/a/b/c/d",
        ])
        .prop_map(String::from),
        prop::collection::vec("[a-z0-9~-]{0,4}", 0..5)
            .prop_map(|p| p.iter().map(|s| format!("/{s}")).collect()),
    ]
}

/// One JSON patch operation, sometimes malformed.
fn operation() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "add", "remove", "replace", "move", "copy", "test", "bogus",
        ]),
        pointer(),
        pointer(),
        json_value(),
        0u8..8,
    )
        .prop_map(|(op, path, from, value, shape)| match shape {
            0 => json!({"op": op, "path": path}),
            1 => json!({"op": op, "from": from}),
            2 => json!({"op": op, "path": path, "from": from, "value": value}),
            3 => value,
            _ => json!({"op": op, "path": path, "from": from, "value": value}),
        })
}

/// A JSON patch may add up to `MAX_BODY` bytes of copies on top of the object and itself.
fn apply_json_patch(target: Value, patch: Value) -> ApiResult<Value> {
    let len = size(&target) + size(&patch) + crate::context::MAX_BODY;
    bounded(len, PATCH_FACTOR, move || {
        crate::patch::apply_json_patch(&target, &patch)
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn json_patches_apply_or_fail_cleanly(doc in json_object(), ops in prop::collection::vec(operation(), 0..12), wrap in 0u8..8) {
        let patch = match wrap {
            0 => ops.first().cloned().unwrap_or(Value::Null),
            1 => json!({"ops": ops}),
            _ => Value::Array(ops),
        };
        if let Err(e) = apply_json_patch(doc, patch) {
            prop_assert!(matches!(e.code, 400 | 413 | 422), "{} {}", e.code, e.message);
        }
    }

    #[test]
    fn merge_patches_apply(doc in json_object(), patch in json_value()) {
        let len = size(&doc) + size(&patch);
        let out = bounded(len, PATCH_FACTOR, move || {
            let mut d = doc;
            json_patch::merge(&mut d, &patch);
            (d, patch)
        });
        // RFC 7386: an object patch's non-null members end up in the result.
        if let (Value::Object(p), Value::Object(d)) = (&out.1, &out.0) {
            for (k, v) in p.iter().filter(|(_, v)| !v.is_null() && !v.is_object()) {
                prop_assert_eq!(d.get(k), Some(v));
            }
        }
    }

    #[test]
    fn strategic_merge_patches_apply_or_fail_cleanly(
        doc in json_object(),
        patch in json_value(),
        def in prop::sample::select(vec!["io.k8s.api.core.v1.Pod", "io.k8s.api.apps.v1.Deployment", "io.k8s.api.core.v1.Service", ""]),
    ) {
        let len = size(&doc) + size(&patch);
        bounded(len, PATCH_FACTOR, move || {
            let shape = if def.is_empty() { Shape::none() } else { Shape::of_definition(def) };
            let _ = strategic_merge(&doc, &patch, shape);
        });
    }

    /// Server-side apply of hostile objects over hostile current objects, with and without force.
    #[test]
    fn server_side_apply_merges_or_fails_cleanly(
        current in prop::option::of(json_object()),
        applied in json_object(),
        managed in prop::collection::vec((prop::sample::select(vec!["kubectl", "other", ""]), json_value()), 0..3),
        force in any::<bool>(),
        res in prop::sample::select(vec![("", "v1", "configmaps"), ("", "v1", "pods"), ("apps", "v1", "deployments")]),
    ) {
        let mut current = current;
        if let Some(c) = current.as_mut() {
            let entries: Vec<Value> = managed.iter().map(|(m, f)| json!({"manager": m, "operation": "Apply", "fieldsV1": f})).collect();
            c["metadata"]["managedFields"] = Value::Array(entries);
        }
        let len = current.as_ref().map(size).unwrap_or(0) + size(&applied);
        let r = bounded(len, PATCH_FACTOR, move || {
            let res = resource(res.0, res.1, res.2);
            let mut ctx = Ctx::internal(&res.group, &res.version, &res.plural, Some("default"));
            ctx.content_type = "application/apply-patch+yaml".into();
            ctx.query = crate::request::Query::parse(Some("fieldManager=kubectl"));
            crate::managed::apply(&ctx, &res, current.as_ref(), &applied, force)
        });
        if let Err(e) = r {
            prop_assert!(matches!(e.code, 400 | 409 | 422), "{} {}", e.code, e.message);
        }
    }
}

proptest! {
    // Each case copies up to the 3 MiB limit: few cases.
    #![proptest_config(config(24))]

    /// Repeated copies of the whole document into itself would double it per operation.
    #[test]
    fn json_patch_copies_stay_within_the_copy_budget(doc in json_object(), copies in 1usize..64, from in prop::sample::select(vec!["", "/metadata", "/spec", "/data"])) {
        let ops: Vec<Value> = (0..copies).map(|i| json!({"op": "copy", "from": from, "path": format!("/x{i}")})).collect();
        if let Err(e) = apply_json_patch(doc, Value::Array(ops)) {
            prop_assert!(matches!(e.code, 400 | 422), "{} {}", e.code, e.message);
        }
    }
}

/// Strategic merge of long lists (sets like finalizers, maps keyed by name like containers)
/// against long originals.
#[test]
fn long_lists_merge_in_bounded_time() {
    let n = 8 * 1024;
    let names = |p: &str| (0..n).map(|i| json!(format!("{p}{i}"))).collect::<Vec<_>>();
    let containers = |p: &str| {
        (0..n)
            .map(|i| json!({"name": format!("{p}{i}"), "image": "x"}))
            .collect::<Vec<_>>()
    };
    let orig =
        json!({"metadata": {"finalizers": names("a")}, "spec": {"containers": containers("a")}});
    let patch = json!({"metadata": {"finalizers": names("b")}, "spec": {"containers": containers("b"),
        "$setElementOrder/containers": containers("b").iter().map(|c| json!({"name": c["name"]})).collect::<Vec<_>>()}});
    let len = size(&orig) + size(&patch);
    let out = bounded(len, PATCH_FACTOR, move || {
        strategic_merge(
            &orig,
            &patch,
            Shape::of_definition("io.k8s.api.core.v1.Pod"),
        )
    })
    .unwrap();
    assert_eq!(
        out["metadata"]["finalizers"].as_array().map(Vec::len),
        Some(2 * n)
    );
    assert_eq!(
        out["spec"]["containers"].as_array().map(Vec::len),
        Some(2 * n)
    );
}

/// Thirty copies of the root into itself: a 422 once the copies pass 3 MiB, not gigabytes.
#[test]
fn json_patch_copy_doubling_is_refused() {
    let doc = json!({"metadata": {"name": "c"}, "data": {"a": "x".repeat(1024)}});
    let ops: Vec<Value> = (0..30)
        .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
        .collect();
    let e = apply_json_patch(doc, Value::Array(ops)).expect_err("copies past the limit");
    assert_eq!(e.code, 422, "{}", e.message);
    assert!(
        e.message.contains("accumulated size increase of copy"),
        "{}",
        e.message
    );
}

/// Upstream's limit of 10,000 operations is a 413.
#[test]
fn json_patch_with_too_many_operations_is_refused() {
    let doc = json!({"metadata": {"name": "c"}});
    let ops = |n: usize| {
        Value::Array(vec![
            json!({"op": "test", "path": "/metadata/name", "value": "c"});
            n
        ])
    };
    assert!(apply_json_patch(doc.clone(), ops(10_000)).is_ok());
    let e = apply_json_patch(doc, ops(10_001)).expect_err("too many operations");
    assert_eq!(e.code, 413, "{}", e.message);
    assert!(
        e.message
            .contains("maximum operations in a JSON patch is 10000, got 10001"),
        "{}",
        e.message
    );
}

/// A failing operation reports its own index, and leaves nothing half-applied.
#[test]
fn json_patch_errors_name_the_operation() {
    let doc = json!({"metadata": {"name": "c"}});
    let ops = json!([{"op": "add", "path": "/metadata/labels", "value": {}}, {"op": "remove", "path": "/nope"}]);
    let e = apply_json_patch(doc, ops).expect_err("remove of a missing path");
    assert_eq!(e.code, 422);
    assert!(e.message.contains("operation '/1' failed"), "{}", e.message);
}

/// Server-side apply and update tracking of an object with many fields: each field is a
/// managed path, and matching paths must not scan every other path (16k keys took over 10 s).
#[test]
fn managed_fields_of_large_objects_scale_linearly() {
    super::assert_linear(2 * 1024, |n| {
        let data: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("key-{i}"), json!("v"))).collect();
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": data});
        let res = resource("", "v1", "configmaps");
        let mut ctx = Ctx::internal("", "v1", "configmaps", Some("default"));
        ctx.content_type = "application/apply-patch+yaml".into();
        ctx.query = crate::request::Query::parse(Some("fieldManager=kubectl"));
        let created = crate::managed::apply(&ctx, &res, None, &applied, false).unwrap();
        // Another manager applies the same fields with one other value: that one conflicts.
        let mut other = applied.clone();
        other["data"]["key-1"] = json!("w");
        ctx.query = crate::request::Query::parse(Some("fieldManager=other"));
        let e = crate::managed::apply(&ctx, &res, Some(&created), &other, false).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(
            e.message.contains("Apply failed with 1 conflict"),
            "{}",
            e.message
        );
        // An update by a third manager takes over what it changed.
        let mut ctx = Ctx::internal("", "v1", "configmaps", Some("default"));
        ctx.user_agent = "editor".into();
        let mut updated = created.clone();
        updated["data"]["key-2"] = json!("u");
        crate::managed::record_update(&ctx, &res, &mut updated, Some(&created), None).unwrap();
        assert_eq!(
            updated["metadata"]["managedFields"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    });
}

/// The same for long lists keyed by name (env) and sets (finalizers), and for removing what
/// an apply no longer has (one list scan per removed path: 60 s for 4k entries).
#[test]
fn managed_fields_of_long_lists_scale_linearly() {
    super::assert_linear(256, |n| {
        let env: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("E{i}"), "value": "v"}))
            .collect();
        let finalizers: Vec<Value> = (0..n).map(|i| json!(format!("example.com/f{i}"))).collect();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": finalizers},
            "spec": {"containers": [{"name": "c", "image": "i", "env": env}]}});
        let res = resource("", "v1", "pods");
        let mut apply_ctx = Ctx::internal("", "v1", "pods", Some("default"));
        apply_ctx.content_type = "application/apply-patch+yaml".into();
        apply_ctx.query = crate::request::Query::parse(Some("fieldManager=kubectl"));
        let created = crate::managed::apply(&apply_ctx, &res, None, &pod, false).unwrap();
        let mut ctx = Ctx::internal("", "v1", "pods", Some("default"));
        ctx.user_agent = "editor".into();
        let mut updated = created.clone();
        updated["spec"]["containers"][0]["env"][7]["value"] = json!("u");
        crate::managed::record_update(&ctx, &res, &mut updated, Some(&created), None).unwrap();
        assert_eq!(
            updated["metadata"]["managedFields"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        // Applying again without the env and finalizers removes what only kubectl owned.
        let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let after = crate::managed::apply(&apply_ctx, &res, Some(&updated), &bare, false).unwrap();
        let env = after["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            env,
            vec![json!({"name": "E7", "value": "u"})],
            "only what the editor changed stays"
        );
        assert_eq!(after["metadata"]["finalizers"], json!([]));
    });
}
