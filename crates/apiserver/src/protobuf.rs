//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0`
//! envelope around a `runtime.Unknown`, whose raw bytes are the typed message. Decoded into
//! the same JSON the API uses, driven by the field tables generated from upstream's .proto
//! files (`protobuf_tables.rs`); JSON field names come from the OpenAPI definitions.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use serde_json::{Map, Value, json};

use super::admission::schema::definitions;
use super::protobuf_tables::{Field, MESSAGES};
use super::status::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";
const MAX_DEPTH: usize = 64;

fn fields_of(name: &str) -> Option<&'static [Field]> {
    MESSAGES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| MESSAGES[i].1)
}

/// The JSON name of a field, resolved once per message and field: resolving scans the
/// definition's properties, and a body may repeat a field hundreds of thousands of times.
fn json_name(message: &str, rust: &'static str) -> String {
    type Names = HashMap<String, HashMap<&'static str, String>>;
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(message).and_then(|m| m.get(rust)) {
        return n.clone();
    }
    // Bounded: only names from the generated tables get here.
    let n = resolve_json_name(message, rust);
    names
        .entry(message.to_string())
        .or_default()
        .insert(rust, n.clone());
    n
}

/// The OpenAPI property that matches the prost (snake_case) name.
fn resolve_json_name(message: &str, rust: &str) -> String {
    let norm = |s: &str| s.replace('_', "").to_lowercase();
    let want = norm(rust);
    if let Some(props) = definitions()
        .get(message)
        .and_then(|d| d.get("properties"))
        .and_then(Value::as_object)
        && let Some(k) = props.keys().find(|k| norm(k) == want)
    {
        return k.clone();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in rust.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflow".into());
            }
            out |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
        self.bytes(n)
    }
    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.bytes(8).map(|_| ()),
            2 => self.len_delimited().map(|_| ()),
            5 => self.bytes(4).map(|_| ()),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

fn scalar(kind: &str, wire: u64, r: &mut Reader) -> Result<Value, String> {
    match (kind, wire) {
        ("int32", 0) => Ok(json!(r.varint()? as i64 as i32)),
        ("int64", 0) => Ok(json!(r.varint()? as i64)),
        ("bool", 0) => Ok(json!(r.varint()? != 0)),
        ("double", 1) => {
            let b = r.bytes(8)?;
            Ok(json!(f64::from_le_bytes(
                b.try_into().map_err(|_| "bad double")?
            )))
        }
        ("string", 2) => Ok(json!(
            std::str::from_utf8(r.len_delimited()?).map_err(|_| "invalid UTF-8 in string")?
        )),
        ("bytes", 2) => Ok(json!(
            base64::engine::general_purpose::STANDARD.encode(r.len_delimited()?)
        )),
        (k, w) => Err(format!("field of type {k} has wire type {w}")),
    }
}

fn time_string(seconds: i64, nanos: i64, micro: bool) -> Result<String, String> {
    let t = chrono::DateTime::from_timestamp(seconds, nanos.clamp(0, 999_999_999) as u32)
        .ok_or("time out of range")?;
    Ok(if micro {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}

/// Messages whose JSON form is not an object of their fields.
fn special(name: &str, buf: &[u8]) -> Option<Result<Value, String>> {
    let short = name.rsplit('.').next().unwrap_or(name);
    let generic = || decode_fields(name, buf, 0);
    let get = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    Some(match short {
        "Quantity" => generic().map(|v| get(&v, "string")),
        "Time" | "MicroTime" if name.contains(".meta.v1.") => generic().and_then(|v| {
            let (secs, nanos) = (
                v.get("seconds").and_then(Value::as_i64).unwrap_or(0),
                v.get("nanos").and_then(Value::as_i64).unwrap_or(0),
            );
            if secs == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            time_string(secs, nanos, short == "MicroTime").map(Value::String)
        }),
        "IntOrString" => generic().map(|v| {
            if v.get("type").and_then(Value::as_i64) == Some(1) {
                get(&v, "strVal")
            } else {
                json!(v.get("intVal").and_then(Value::as_i64).unwrap_or(0))
            }
        }),
        "FieldsV1" | "RawExtension" | "JSON" => {
            let mut r = Reader { buf, pos: 0 };
            let mut raw: &[u8] = &[];
            while !r.done() {
                let key = match r.varint() {
                    Ok(k) => k,
                    Err(e) => return Some(Err(e)),
                };
                if key >> 3 == 1 && key & 7 == 2 {
                    match r.len_delimited() {
                        Ok(b) => raw = b,
                        Err(e) => return Some(Err(e)),
                    }
                } else if let Err(e) = r.skip(key & 7) {
                    return Some(Err(e));
                }
            }
            if raw.is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_slice(raw).map_err(|e| format!("embedded JSON: {e}"))
            }
        }
        _ => return None,
    })
}

fn decode_message(name: &str, buf: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("message nesting too deep".into());
    }
    if let Some(v) = special(name, buf) {
        return v;
    }
    decode_fields(name, buf, depth)
}

fn decode_fields(name: &str, buf: &[u8], depth: usize) -> Result<Value, String> {
    let fields = fields_of(name).ok_or_else(|| format!("unknown message type {name}"))?;
    let mut out = Map::new();
    let mut r = Reader { buf, pos: 0 };
    while !r.done() {
        let key = r.varint()?;
        let (tag, wire) = ((key >> 3) as u32, key & 7);
        let Some(&(_, rust, kind, msg, repeated)) = fields.iter().find(|f| f.0 == tag) else {
            r.skip(wire)?;
            continue;
        };
        let jname = json_name(name, rust);
        let value = match kind {
            "message" => {
                if wire != 2 {
                    return Err(format!("{jname}: message field with wire type {wire}"));
                }
                decode_message(msg, r.len_delimited()?, depth + 1)?
            }
            "map_string" | "map_bytes" | "map_message" => {
                let entry = r.len_delimited()?;
                let mut er = Reader { buf: entry, pos: 0 };
                let (mut k, mut v) = (String::new(), Value::Null);
                while !er.done() {
                    let ek = er.varint()?;
                    match (ek >> 3, ek & 7) {
                        (1, 2) => {
                            k = std::str::from_utf8(er.len_delimited()?)
                                .map_err(|_| "invalid UTF-8 in map key")?
                                .to_string()
                        }
                        (2, 2) => {
                            let b = er.len_delimited()?;
                            v = match kind {
                                "map_string" => json!(
                                    std::str::from_utf8(b)
                                        .map_err(|_| "invalid UTF-8 in map value")?
                                ),
                                "map_bytes" => {
                                    json!(base64::engine::general_purpose::STANDARD.encode(b))
                                }
                                _ => decode_message(msg, b, depth + 1)?,
                            };
                        }
                        (_, w) => er.skip(w)?,
                    }
                }
                let m = out.entry(jname).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(
                        k,
                        if v.is_null() && kind == "map_string" {
                            json!("")
                        } else {
                            v
                        },
                    );
                }
                continue;
            }
            scalar_kind
                if repeated && wire == 2 && scalar_kind != "string" && scalar_kind != "bytes" =>
            {
                // Packed repeated scalars.
                let packed = r.len_delimited()?;
                let mut pr = Reader {
                    buf: packed,
                    pos: 0,
                };
                let inner_wire = if scalar_kind == "double" { 1 } else { 0 };
                let list = out.entry(jname).or_insert_with(|| json!([]));
                while !pr.done() {
                    let v = scalar(scalar_kind, inner_wire, &mut pr)?;
                    if let Some(a) = list.as_array_mut() {
                        a.push(v);
                    }
                }
                continue;
            }
            scalar_kind => scalar(scalar_kind, wire, &mut r)?,
        };
        if repeated {
            let list = out.entry(jname).or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(value);
            }
        } else if !(value.is_null() || value == "") {
            // Go's encoder writes non-pointer fields even when empty; their JSON form omits
            // empty strings and zero times, so the decoded object matches a JSON request.
            out.insert(jname, value);
        }
    }
    Ok(Value::Object(out))
}

/// The message for a group/version/kind (`apps/v1` `Deployment` -> `io.k8s.api.apps.v1.Deployment`).
fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "io.k8s.api.core".to_string(),
        "apiextensions.k8s.io" => {
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_string()
        }
        "meta.k8s.io" => "io.k8s.apimachinery.pkg.apis.meta".to_string(),
        g => format!("io.k8s.api.{}", g.split('.').next().unwrap_or(g)),
    };
    let exact = format!("{package}.{version}.{kind}");
    if let Some((n, _)) = MESSAGES.iter().find(|(n, _)| *n == exact) {
        return Some(n);
    }
    // Shared option types (DeleteOptions, ...) live in meta/v1 whatever the request's group.
    let meta = format!("io.k8s.apimachinery.pkg.apis.meta.v1.{kind}");
    MESSAGES.iter().find(|(n, _)| *n == meta).map(|(n, _)| *n)
}

/// Decodes a protobuf request body into the JSON object it carries.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let bad = |m: String| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized or invalid: protobuf: {m}"
        ))
    };
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing k8s protobuf envelope".into()))?;
    let unknown =
        decode_fields("io.k8s.apimachinery.pkg.runtime.Unknown", payload, 0).map_err(bad)?;
    let av = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if unknown
        .get("contentEncoding")
        .and_then(Value::as_str)
        .is_some_and(|e| !e.is_empty())
    {
        return Err(bad("content encodings are not supported".into()));
    }
    let raw = unknown.get("raw").and_then(Value::as_str).unwrap_or("");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|e| bad(e.to_string()))?;
    let message =
        message_for(&av, &kind).ok_or_else(|| bad(format!("no protobuf type for {av} {kind}")))?;
    let mut obj = decode_message(message, &raw, 0).map_err(bad)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(av));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_field_names_a_message_of_the_tables() {
        for (name, fields) in MESSAGES {
            for (tag, field, kind, message, _) in fields.iter() {
                if *kind == "message" || *kind == "map_message" {
                    assert!(
                        fields_of(message).is_some(),
                        "{name} field {field} ({tag}) names {message:?}, not in the tables"
                    );
                }
            }
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

    fn field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(((tag as u64) << 3) | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = Vec::new();
        field(1, b"c1", &mut meta);
        let mut entry = Vec::new();
        field(1, b"app", &mut entry);
        field(2, b"web", &mut entry);
        field(11, &entry, &mut meta); // labels
        let mut ts = Vec::new();
        varint(1 << 3, &mut ts);
        varint(1_700_000_000, &mut ts);
        field(8, &ts, &mut meta); // creationTimestamp
        let mut cm = Vec::new();
        field(1, &meta, &mut cm);
        let mut data = Vec::new();
        field(1, b"a", &mut data);
        field(2, b"1", &mut data);
        field(2, &data, &mut cm);
        let mut tm = Vec::new();
        field(1, b"v1", &mut tm);
        field(2, b"ConfigMap", &mut tm);
        let mut unknown = Vec::new();
        field(1, &tm, &mut unknown);
        field(2, &cm, &mut unknown);
        let mut body = b"k8s\0".to_vec();
        body.extend(unknown);
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], "c1");
        assert_eq!(v["metadata"]["labels"]["app"], "web");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["a"], "1");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b"k8s\0\xff\xff\xff"[..],
            b"k8s\0\x0a\x05ab",
            b"nope",
            b"k8s\0\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
        ] {
            assert!(decode(body).is_err());
        }
    }
}
