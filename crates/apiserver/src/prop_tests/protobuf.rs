//! Kubernetes protobuf bodies: messages built from the generated field tables (so they reach
//! the typed decoder, nested, with every field kind), then made hostile: wrong wire types,
//! unknown fields, invalid UTF-8, out-of-range times, bad embedded JSON, truncation.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

use super::generators::{deep_json, mutate, mutation};
use super::{bounded, config};
use crate::context::Ctx;
use crate::protobuf_tables::{Field, MESSAGES};
use crate::status::ApiResult;

/// A stream of choices for the builder; running out means "the simplest choice", so shrinking
/// the stream shrinks the message.
struct Choices<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        let v = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        if n == 0 { 0 } else { v % n }
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.byte()))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn key(tag: u32, wire: u64, out: &mut Vec<u8>) {
    varint(((tag as u64) << 3) | wire, out);
}

fn len_field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
    key(tag, 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn fields_of(name: &str) -> Option<&'static [Field]> {
    MESSAGES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Builds messages of the tables' types; `hostile` allows what a real client never sends.
struct Builder<'a> {
    c: Choices<'a>,
    hostile: bool,
}

impl Builder<'_> {
    fn string(&mut self) -> Vec<u8> {
        let clean: [&[u8]; 6] = [
            b"",
            b"a",
            b"web-1",
            b"app.kubernetes.io/name",
            b"100m",
            "\u{e9}\u{4e2d}".as_bytes(),
        ];
        let hostile: [&[u8]; 5] = [
            b"\xff\xfe",
            b"\xc3",
            b"\xed\xa0\x80",
            b"a\0b",
            b"\xf4\x90\x80\x80",
        ];
        if self.hostile && self.c.below(4) == 0 {
            hostile[self.c.below(hostile.len())].to_vec()
        } else {
            clean[self.c.below(clean.len())].to_vec()
        }
    }

    /// JSON embedded in RawExtension, JSON and FieldsV1.
    fn raw_json(&mut self) -> Vec<u8> {
        if self.hostile {
            match self.c.below(5) {
                0 => deep_json(self.c.below(300), self.c.byte()),
                1 => b"{\"a\":".to_vec(),
                2 => b"\xff".to_vec(),
                _ => b"{\"f:metadata\":{\"f:labels\":{}}}".to_vec(),
            }
        } else {
            b"{\"f:metadata\":{\"f:labels\":{\".\":{}}},\"x\":[1,2.5,null]}".to_vec()
        }
    }

    fn scalar(&mut self, kind: &str, out: &mut Vec<u8>) {
        match kind {
            "bool" | "int32" | "int64" => {
                let v = match self.c.below(4) {
                    0 => 0,
                    1 => 1,
                    2 => self.c.u64(),
                    _ => (self.c.below(1 << 16)) as u64,
                };
                varint(v, out);
            }
            "double" => out.extend_from_slice(&f64::from_bits(self.c.u64()).to_le_bytes()),
            _ => {}
        }
    }

    fn message(&mut self, name: &str, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let short = name.rsplit('.').next().unwrap_or(name);
        if matches!(short, "RawExtension" | "JSON" | "Json" | "FieldsV1") {
            let raw = self.raw_json();
            len_field(1, &raw, &mut out);
            return out;
        }
        if matches!(short, "Time" | "MicroTime") && !self.hostile {
            key(1, 0, &mut out);
            varint(self.c.below(4_000_000_000) as u64, &mut out);
            return out;
        }
        // Empty messages (`CustomResourceSubresourceStatus`) have nothing to generate.
        let Some(fields) = fields_of(name).filter(|f| !f.is_empty()) else {
            return out;
        };
        for _ in 0..self.c.below(6) {
            if self.hostile && self.c.below(12) == 0 {
                // An unknown field, or a known one with any wire type.
                let tag = if self.c.below(2) == 0 {
                    100 + self.c.below(1000) as u32
                } else {
                    1 + self.c.below(40) as u32
                };
                let wire = self.c.below(8) as u64;
                key(tag, wire, &mut out);
                match wire {
                    0 => varint(self.c.u64(), &mut out),
                    1 => out.extend_from_slice(&self.c.u64().to_le_bytes()),
                    2 => {
                        let n = self.c.below(8);
                        varint(n as u64, &mut out);
                        out.extend((0..n).map(|_| self.c.byte()));
                    }
                    5 => out.extend_from_slice(&(self.c.u64() as u32).to_le_bytes()),
                    _ => {}
                }
                continue;
            }
            let &(tag, _, kind, msg, repeated) = &fields[self.c.below(fields.len())];
            match kind {
                "message" => {
                    if depth >= 5
                        || (!self.hostile && fields_of(msg).is_none() && !msg.ends_with("Time"))
                    {
                        continue;
                    }
                    let inner = self.message(msg, depth + 1);
                    len_field(tag, &inner, &mut out);
                }
                "map_string" | "map_bytes" | "map_message" => {
                    let mut entry = Vec::new();
                    let k = self.string();
                    len_field(1, &k, &mut entry);
                    let v = match kind {
                        "map_message"
                            if depth < 5 && (self.hostile || fields_of(msg).is_some()) =>
                        {
                            self.message(msg, depth + 1)
                        }
                        "map_message" => continue,
                        _ => self.string(),
                    };
                    len_field(2, &v, &mut entry);
                    len_field(tag, &entry, &mut out);
                }
                "string" | "bytes" => {
                    let s = self.string();
                    len_field(tag, &s, &mut out);
                }
                scalar if repeated && self.c.below(2) == 0 => {
                    let mut packed = Vec::new();
                    for _ in 0..self.c.below(5) {
                        self.scalar(scalar, &mut packed);
                    }
                    len_field(tag, &packed, &mut out);
                }
                scalar => {
                    key(tag, if scalar == "double" { 1 } else { 0 }, &mut out);
                    self.scalar(scalar, &mut out);
                }
            }
        }
        out
    }
}

/// Top-level types (apiVersion, kind, message), with the shared option types.
const KINDS: &[(&str, &str, &str)] = &[
    ("v1", "Pod", "io.k8s.api.core.v1.Pod"),
    ("v1", "ConfigMap", "io.k8s.api.core.v1.ConfigMap"),
    ("v1", "Secret", "io.k8s.api.core.v1.Secret"),
    ("v1", "Service", "io.k8s.api.core.v1.Service"),
    ("v1", "Node", "io.k8s.api.core.v1.Node"),
    ("apps/v1", "Deployment", "io.k8s.api.apps.v1.Deployment"),
    ("batch/v1", "CronJob", "io.k8s.api.batch.v1.CronJob"),
    (
        "v1",
        "DeleteOptions",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    ),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    ),
];

/// The `k8s\0` envelope around a `runtime.Unknown` carrying `raw`.
fn envelope(api_version: &str, kind: &str, raw: &[u8], encoding: &str) -> Vec<u8> {
    let mut tm = Vec::new();
    len_field(1, api_version.as_bytes(), &mut tm);
    len_field(2, kind.as_bytes(), &mut tm);
    let mut unknown = Vec::new();
    len_field(1, &tm, &mut unknown);
    len_field(2, raw, &mut unknown);
    if !encoding.is_empty() {
        len_field(3, encoding.as_bytes(), &mut unknown);
    }
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown);
    body
}

fn decode(body: Vec<u8>) -> ApiResult<Value> {
    let mut ctx = Ctx::internal("", "v1", "pods", Some("default"));
    ctx.content_type = "application/vnd.kubernetes.protobuf".into();
    ctx.decode_body(&Bytes::from(body))
}

/// Memory per input byte: a one-byte packed varint becomes an 80-byte `Value` in a vector
/// that may double (76x measured).
const PROTOBUF_FACTOR: usize = 128;

fn bounded_decode(body: Vec<u8>) -> ApiResult<Value> {
    bounded(body.len(), PROTOBUF_FACTOR, move || decode(body))
}

proptest! {
    #![proptest_config(config(256))]

    /// Messages a client could send decode, as objects of their kind.
    #[test]
    fn well_formed_messages_decode(kind in prop::sample::select(KINDS), choices in prop::collection::vec(any::<u8>(), 0..512)) {
        let (av, k, msg) = kind;
        let raw = Builder { c: Choices { bytes: &choices, pos: 0 }, hostile: false }.message(msg, 0);
        let r = bounded_decode(envelope(av, k, &raw, ""));
        let v = r.map_err(|e| e.message);
        prop_assert!(v.is_ok(), "{:?}", v);
        let v = v.unwrap();
        prop_assert_eq!(&v["kind"], k);
        prop_assert_eq!(&v["apiVersion"], av);
    }

    /// Hostile messages and envelopes: Ok or a 400, never a panic.
    #[test]
    fn hostile_messages_fail_cleanly(
        kind in prop::sample::select(KINDS),
        choices in prop::collection::vec(any::<u8>(), 0..768),
        encoding in prop::sample::select(vec!["", "", "", "gzip"]),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        let (av, k, msg) = kind;
        let raw = Builder { c: Choices { bytes: &choices, pos: 0 }, hostile: true }.message(msg, 0);
        let body = mutate(envelope(av, k, &raw, encoding), &muts);
        if let Err(e) = bounded_decode(body) {
            prop_assert_eq!(e.code, 400, "{}", e.message);
        }
    }

    /// Raw bytes behind the magic, and a Pod envelope around raw bytes.
    #[test]
    fn arbitrary_payloads_fail_cleanly(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for b in [body.clone(), [b"k8s\0".as_slice(), &body].concat(), envelope("v1", "Pod", &body, "")] {
            if let Err(e) = bounded_decode(b) {
                prop_assert_eq!(e.code, 400, "{}", e.message);
            }
        }
    }

    /// Nesting (allOf inside allOf ...) decodes up to the decoder's limit of 64 and is a 400 past it.
    #[test]
    fn deep_messages_are_refused_past_the_limit(depth in 1usize..200) {
        let mut inner = Vec::new();
        for _ in 0..depth {
            let mut outer = Vec::new();
            len_field(25, &inner, &mut outer); // allOf
            inner = outer;
        }
        let mut validation = Vec::new();
        len_field(1, &inner, &mut validation); // openAPIV3Schema
        let mut version = Vec::new();
        len_field(1, b"v1", &mut version);
        len_field(4, &validation, &mut version); // schema
        let mut spec = Vec::new();
        len_field(1, b"example.com", &mut spec);
        len_field(7, &version, &mut spec); // versions
        let mut crd = Vec::new();
        len_field(2, &spec, &mut crd);
        let r = bounded_decode(envelope("apiextensions.k8s.io/v1", "CustomResourceDefinition", &crd, ""));
        if depth < 55 {
            prop_assert!(r.is_ok(), "{:?}", r.err().map(|e| e.message));
        } else if depth > 70 {
            let e = r.expect_err("too deep");
            prop_assert_eq!(e.code, 400);
            prop_assert!(e.message.contains("too deep"), "{}", e.message);
        }
    }
}

/// A large body of the cheapest repeated fields (packed one-byte varints, empty messages,
/// one field repeated) decodes in bounded time and memory. Resolving the JSON name of every
/// occurrence anew took over 2 s for 1 MiB of repeated strings in a debug build.
#[test]
fn large_repeated_fields_stay_linear() {
    let n = 256 * 1024;
    // PodSecurityContext.supplementalGroups (packed int64) under PodSpec.securityContext.
    let mut sc = Vec::new();
    len_field(4, &vec![1u8; n], &mut sc);
    let mut spec = Vec::new();
    len_field(14, &sc, &mut spec);
    // Many empty containers.
    for _ in 0..n / 4 {
        len_field(2, &[], &mut spec);
        len_field(3, b"Always", &mut spec); // restartPolicy
    }
    let mut pod = Vec::new();
    len_field(2, &spec, &mut pod);
    let body = envelope("v1", "Pod", &pod, "");
    let v = bounded_decode(body).unwrap();
    assert_eq!(
        v["spec"]["securityContext"]["supplementalGroups"]
            .as_array()
            .map(Vec::len),
        Some(n)
    );
    assert_eq!(
        v["spec"]["containers"].as_array().map(Vec::len),
        Some(n / 4)
    );
    assert_eq!(v["spec"]["restartPolicy"], "Always");
}
