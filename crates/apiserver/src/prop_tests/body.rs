//! Request bodies: `Ctx::decode_body` over JSON, YAML and content types, deep nesting and
//! YAML aliases.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

use super::generators::{alias_bomb, deep_json, deep_yaml, json_object, mutate, mutation};
use super::{bounded, config};
use crate::context::Ctx;
use crate::status::ApiResult;

/// Decodes `body` as `content_type` the way a create or update does.
fn decode(content_type: &str, body: Vec<u8>) -> ApiResult<Value> {
    let mut ctx = Ctx::internal("", "v1", "configmaps", Some("default"));
    ctx.content_type = content_type.to_string();
    ctx.decode_body(&Bytes::from(body))
}

/// Memory a decode may hold per byte of input. serde_json's `Value` takes 80 bytes for a
/// two-byte `0,` (36x measured); serde_yaml first keeps every event of the document (150x
/// measured for `[[],[],...`), and the decoded value may take up to 64x (the alias budget).
const JSON_FACTOR: usize = 64;
const YAML_FACTOR: usize = 256;

/// A decode bounded in time and memory.
fn bounded_decode(content_type: &'static str, body: Vec<u8>) -> ApiResult<Value> {
    let factor = if content_type.contains("yaml") {
        YAML_FACTOR
    } else {
        JSON_FACTOR
    };
    bounded(body.len(), factor, move || decode(content_type, body))
}

/// A clean refusal: a 4xx the client can act on.
fn assert_client_error(r: &ApiResult<Value>) {
    if let Err(e) = r {
        assert!(
            matches!(e.code, 400 | 413 | 415),
            "{} {}",
            e.code,
            e.message
        );
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn json_bodies_decode_or_fail_cleanly(obj in json_object(), muts in prop::collection::vec(mutation(), 0..4)) {
        let text = serde_json::to_vec(&obj).unwrap();
        let body = mutate(text, &muts);
        let r = bounded_decode("application/json", body);
        assert_client_error(&r);
        if muts.is_empty() {
            prop_assert_eq!(r.ok(), Some(obj));
        } else if let Ok(v) = r {
            prop_assert!(v.is_object());
        }
    }

    #[test]
    fn yaml_bodies_decode_or_fail_cleanly(obj in json_object(), muts in prop::collection::vec(mutation(), 0..4)) {
        let text = serde_yaml::to_string(&obj).unwrap().into_bytes();
        let body = mutate(text, &muts);
        let r = bounded_decode("application/yaml", body);
        assert_client_error(&r);
        if muts.is_empty() {
            prop_assert_eq!(r.ok(), Some(obj));
        } else if let Ok(v) = r {
            prop_assert!(v.is_object());
        }
    }

    #[test]
    fn arbitrary_bytes_under_any_content_type(
        body in prop::collection::vec(any::<u8>(), 0..512),
        ct in prop_oneof![
            Just("application/json"), Just("application/yaml"), Just("text/yaml"),
            Just("application/vnd.kubernetes.protobuf"), Just("application/json; charset=utf-8"),
            Just(""), Just("*/*"), Just("text/csv"), Just(";;;"), Just("application/\u{fffd}"),
        ],
    ) {
        let r = bounded_decode(ct, body);
        assert_client_error(&r);
        if let Ok(v) = r {
            prop_assert!(v.is_object());
        }
    }

    /// Nesting below serde's limit of 128 decodes; far past it is a 400, in both formats.
    #[test]
    fn deep_nesting_is_refused_past_the_limit(depth in 1usize..600, style in 0u8..3, flow in any::<bool>()) {
        let levels = if style == 2 { 2 * depth } else { depth };
        for (ct, body) in [("application/json", deep_json(depth, style)), ("application/yaml", deep_yaml(depth, flow))] {
            let nesting = if ct == "application/json" { levels } else { depth };
            let r = bounded_decode(ct, body);
            assert_client_error(&r);
            if nesting < 100 {
                prop_assert!(r.is_ok(), "{} levels of {}: {:?}", nesting, ct, r.err().map(|e| e.message));
            } else if nesting > 130 {
                prop_assert!(r.is_err(), "{} levels of {} decoded", nesting, ct);
            }
        }
    }
}

proptest! {
    // Each case may expand up to the 4 MiB alias budget: fewer cases.
    #![proptest_config(config(96))]

    /// Aliases never expand a document past the memory budget: small expansions decode, bombs
    /// are a 400.
    #[test]
    fn yaml_aliases_expand_within_bounds(
        levels in 1usize..12,
        width in 1usize..16,
        payload in prop_oneof![
            Just("x".to_string()),
            Just(format!("\"{}\"", "y".repeat(4096))),
            Just(format!("[{}]", vec!["1"; 500].join(","))),
            Just("{a: 1, b: [2, 3], c: {d: e}}".to_string()),
        ],
    ) {
        let body = alias_bomb(levels, width, &payload);
        let small = width.pow(levels as u32) <= 16 && payload.len() < 100;
        let r = bounded_decode("application/yaml", body);
        assert_client_error(&r);
        if small {
            prop_assert!(r.is_ok(), "{:?}", r.err().map(|e| e.message));
        }
    }
}

/// One anchor with many elements, referenced many times: few aliases and little nesting, but
/// hundreds of millions of nodes if expanded.
#[test]
fn wide_anchor_referenced_many_times_is_refused() {
    let elements = vec!["1"; 16 * 1024].join(",");
    let refs = vec!["*a"; 16 * 1024].join(",");
    let body = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: wide}}\nx: &a [{elements}]\ny: [{refs}]\n"
    );
    let r = bounded_decode("application/yaml", body.into_bytes());
    let e = r.expect_err("the expansion must be refused");
    assert_eq!(e.code, 400, "{}", e.message);
}

/// The same with a long string: each alias would copy it.
#[test]
fn long_string_referenced_many_times_is_refused() {
    let refs = vec!["*s"; 32 * 1024].join(",");
    let body = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: s}}\nx: &s \"{}\"\ny: [{refs}]\n",
        "z".repeat(64 * 1024)
    );
    let r = bounded_decode("application/yaml", body.into_bytes());
    let e = r.expect_err("the expansion must be refused");
    assert_eq!(e.code, 400, "{}", e.message);
}

/// Ordinary anchors (a shared block reused a few times) still decode.
#[test]
fn modest_aliases_still_decode() {
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\nbase: &b {image: nginx, ports: [80, 443]}\ndata:\n  one: *b\n  two: *b\n";
    let v = bounded_decode("application/yaml", body.as_bytes().to_vec()).unwrap();
    assert_eq!(v["data"]["two"]["ports"][1], 443);
}

/// Large plain bodies (no aliases) decode, in memory linear in their size.
#[test]
fn large_plain_bodies_cost_linear_memory() {
    let n = 128 * 1024;
    let wrap = |x: &str| {
        format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"c\"}},\"x\":[{x}]}}"
        )
    };
    let block: String = (0..n / 8).map(|i| format!("  k{i}:\n")).collect();
    for (ct, body) in [
        ("application/json", wrap(&vec!["0"; n].join(","))),
        ("application/json", wrap(&vec!["{}"; n].join(","))),
        ("application/yaml", wrap(&vec!["0"; n].join(","))),
        ("application/yaml", wrap(&vec!["[]"; n].join(","))),
        (
            "application/yaml",
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n{block}"),
        ),
    ] {
        let len = body.len();
        let factor = if ct == "application/json" {
            JSON_FACTOR
        } else {
            YAML_FACTOR
        };
        let r = bounded(len, factor, move || decode(ct, body.into_bytes()));
        assert!(r.is_ok(), "{ct} {len}: {:?}", r.err().map(|e| e.message));
    }
}

/// Nesting far past the limit is refused before it costs stack or memory.
#[test]
fn very_deep_nesting_is_refused() {
    for (ct, body) in [
        ("application/json", deep_json(10_000, 0)),
        ("application/json", deep_json(10_000, 1)),
        ("application/yaml", deep_yaml(10_000, true)),
        ("application/yaml", deep_yaml(500, false)),
    ] {
        let e = bounded_decode(ct, body).expect_err("too deep");
        assert_eq!(e.code, 400, "{}", e.message);
    }
}
