//! Generators shared by the decoder properties: JSON values shaped like Kubernetes objects with
//! hostile leaves, and byte-level mutations of their encodings.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Object keys: the ones decoders and patches give meaning to, and a few arbitrary ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "apiVersion", "kind", "metadata", "name", "namespace", "labels", "annotations",
            "resourceVersion", "uid", "finalizers", "managedFields", "spec", "status", "data",
            "containers", "image", "env", "ports", "containerPort", "protocol", "replicas",
            "template", "selector", "matchLabels", "tolerations", "volumes", "items",
            "$patch", "$retainKeys", "$setElementOrder/containers", "$deleteFromPrimitiveList/finalizers",
            "op", "path", "from", "value",
        ])
        .prop_map(String::from),
        1 => "[a-zA-Z0-9._/$~-]{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

/// Leaves: ordinary values and the edges of every JSON type.
pub fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(f64::MAX),
            json!(f64::MIN_POSITIVE),
            json!(1e308),
            json!(-0.0),
            json!(""),
            json!("v1"),
            json!("Pod"),
            json!("ConfigMap"),
            json!("replace"),
            json!("delete"),
            json!("merge"),
            json!("/metadata/name"),
            json!("/spec/containers/0"),
            json!("/-"),
            json!("~1~0"),
            json!("\u{0}\u{feff}\u{10ffff}"),
        ]),
        "[a-z0-9./-]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

/// JSON values a few levels deep, shaped like API objects.
pub fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A top-level object that looks like a request body.
pub fn json_object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![("v1", "ConfigMap"), ("v1", "Pod"), ("apps/v1", "Deployment"), ("v1", "Service")]),
        "[a-z0-9]{1,8}",
        json_value(),
        json_value(),
    )
        .prop_map(|((av, kind), name, spec, data)| {
            json!({"apiVersion": av, "kind": kind, "metadata": {"name": name, "labels": {"app": "x"}}, "spec": spec, "data": data})
        })
}

/// A byte-level change to an encoded document.
#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Duplicate(prop::sample::Index, prop::sample::Index),
    Remove(prop::sample::Index, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                prop::sample::select(vec![
                    b"\xff\xfe".to_vec(),
                    b"\xc3".to_vec(),
                    b"\xed\xa0\x80".to_vec(),
                    b"\\ud800".to_vec(),
                    b"\0".to_vec(),
                    b"99999999999999999999999999999".to_vec(),
                    b"1e99999".to_vec(),
                    b"-".to_vec(),
                    b"[".to_vec(),
                    b"{".to_vec(),
                    b"\"".to_vec(),
                    b"&a ".to_vec(),
                    b"*a".to_vec(),
                    b"<<: *a\n".to_vec(),
                    b"!!binary ".to_vec(),
                    b"--- ".to_vec(),
                    b"\t".to_vec(),
                ]),
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        (any::<prop::sample::Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

/// Applies mutations in order.
pub fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        let at = |i: &prop::sample::Index| if len == 0 { 0 } else { i.index(len + 1) };
        match m {
            Mutation::Truncate(i) => bytes.truncate(at(i)),
            Mutation::Flip(i, b) if len > 0 => {
                let i = i.index(len);
                bytes[i] ^= b;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, b) => {
                let i = at(i);
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Duplicate(a, b) => {
                let (a, b) = (at(a), at(b));
                let (from, to) = (a.min(b), a.max(b));
                let copy = bytes[from..to].to_vec();
                bytes.splice(to..to, copy);
            }
            Mutation::Remove(i, n) => {
                let i = at(i);
                let end = (i + n).min(len);
                bytes.drain(i..end);
            }
        }
    }
    bytes
}

/// Nesting of `depth` levels in JSON (arrays, objects or both), with a payload inside.
pub fn deep_json(depth: usize, style: u8) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = match style % 3 {
        0 => (b"[", b"]"),
        1 => (b"{\"a\":", b"}"),
        _ => (b"{\"spec\":[", b"]}"),
    };
    let mut out =
        b"{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"deep\"},\"data\":"
            .to_vec();
    for _ in 0..depth {
        out.extend_from_slice(open);
    }
    out.extend_from_slice(b"1");
    for _ in 0..depth {
        out.extend_from_slice(close);
    }
    out.push(b'}');
    out
}

/// Nesting of `depth` levels in YAML, in block or flow style.
pub fn deep_yaml(depth: usize, flow: bool) -> Vec<u8> {
    let mut out = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\ndata:\n");
    if flow {
        out.push_str("  x: ");
        out.push_str(&"[".repeat(depth));
        out.push_str(&"]".repeat(depth));
    } else {
        for d in 0..depth {
            out.push_str(&" ".repeat(2 * (d + 1)));
            out.push_str("a:\n");
        }
        out.push_str(&" ".repeat(2 * (depth + 1)));
        out.push_str("b: 1");
    }
    out.push('\n');
    out.into_bytes()
}

/// YAML that expands through aliases: `levels` anchors, each a list of `width` references to
/// the one before (billion laughs), the first holding `payload`.
pub fn alias_bomb(levels: usize, width: usize, payload: &str) -> Vec<u8> {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\ndata:\n  l0: &l0 {payload}\n"
    );
    for l in 1..=levels {
        let refs = vec![format!("*l{}", l - 1); width].join(", ");
        out.push_str(&format!("  l{l}: &l{l} [{refs}]\n"));
    }
    out.into_bytes()
}
