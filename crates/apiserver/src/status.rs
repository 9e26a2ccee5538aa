//! API errors as upstream `Status` objects.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

use kinglet_store::StoreError;

/// One field-level cause of an `Invalid` error.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn new(
        reason: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Cause {
        Cause {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Cause {
        Cause::new("FieldValueRequired", field, "Required value")
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {shown}: {}", detail.into()),
        )
    }
    pub fn unsupported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Cause {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Cause::new(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        )
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Cause {
        Cause::new(
            "FieldValueForbidden",
            field,
            format!("Forbidden: {}", detail.into()),
        )
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {value}"),
        )
    }
    /// "field: message" as upstream prints it.
    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An error answered as a `Status`.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Names a resource in messages: `pods`, `deployments.apps`.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }
    fn with_details(mut self, name: &str, group: &str, kind: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        if name.is_empty() {
            d.as_object_mut().map(|m| m.remove("name"));
        }
        self.details = Some(d);
        self
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", msg)
    }
    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(name, group, plural)
    }
    pub fn path_not_found() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(name, group, plural)
    }
    pub fn conflict(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        )
        .with_details(name, group, plural)
    }
    pub fn conflict_msg(group: &str, plural: &str, name: &str, msg: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                qualified(group, plural)
            ),
        )
        .with_details(name, group, plural)
    }
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let list: Vec<String> = causes.iter().map(Cause::describe).collect();
        let summary = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!(
                "{kind}.{} \"{name}\" is invalid: {summary}",
                if group.is_empty() { "" } else { group }
            ),
        )
        .with_details(name, group, kind);
        if group.is_empty() {
            e.message = format!("{kind} \"{name}\" is invalid: {summary}");
        }
        if let Some(d) = e.details.as_mut() {
            d["causes"] = Value::Array(
                causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect(),
            );
        }
        e
    }
    pub fn method_not_allowed(msg: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", msg)
    }
    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"
            ),
        )
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(msg: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", msg)
    }
    pub fn expired(msg: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", msg)
    }
    pub fn too_large() -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", msg.into()),
        )
    }
    pub fn timeout(msg: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", msg)
    }

    /// Maps a store error for the object `name` of `group`/`plural`.
    pub fn from_store(e: StoreError, group: &str, plural: &str, name: &str) -> ApiError {
        match e {
            StoreError::AlreadyExists => ApiError::already_exists(group, plural, name),
            StoreError::NotFound => ApiError::not_found(group, plural, name),
            StoreError::Conflict(_) => ApiError::conflict(group, plural, name),
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            // 507 Insufficient Storage (RFC 4918): the write was refused for lack of disk,
            // the client can do nothing but free space; kubectl prints reason and message.
            StoreError::NoSpace(_) => ApiError::new(507, "InsufficientStorage", e.to_string()),
            StoreError::Internal(m) => ApiError::internal(m),
        }
    }

    /// The `Status` upstream answers for this error (see [`status_object`]).
    pub fn to_status(&self) -> Value {
        status_object(
            "Failure",
            &self.message,
            self.reason,
            self.details.as_ref(),
            self.code,
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            go_json(&self.to_status()),
        )
            .into_response();
        for (k, v) in &self.headers {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                resp.headers_mut().insert(*k, v);
            }
        }
        resp
    }
}

/// A success `Status` (e.g. for deletes that removed the object at once); an empty `details`
/// is left out, as Go leaves out a nil `*StatusDetails`.
pub fn success_status(details: Value) -> Value {
    let details = Some(&details).filter(|d| d.as_object().is_some_and(|m| !m.is_empty()));
    status_object("Success", "", "", details, 0)
}

/// A `metav1.Status` as Go's encoder writes it: fields in the order the Go type declares them
/// (`kind, apiVersion, metadata, status, message, reason, details, code`), `omitempty` fields
/// left out when empty. `details` may come from anywhere (other modules, webhooks), so its
/// fields are put in `StatusDetails` order here too.
pub fn status_object(
    status: &str,
    message: &str,
    reason: &str,
    details: Option<&Value>,
    code: u16,
) -> Value {
    let mut s = Map::new();
    s.insert("kind".into(), json!("Status"));
    s.insert("apiVersion".into(), json!("v1"));
    s.insert("metadata".into(), json!({}));
    put_str(&mut s, "status", status);
    put_str(&mut s, "message", message);
    put_str(&mut s, "reason", reason);
    if let Some(d) = details.and_then(Value::as_object) {
        s.insert("details".into(), Value::Object(go_details(d)));
    }
    if code != 0 {
        s.insert("code".into(), json!(code));
    }
    Value::Object(s)
}

/// `StatusDetails` fields in Go's order: name, group, kind, uid, causes, retryAfterSeconds.
fn go_details(d: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for k in ["name", "group", "kind", "uid"] {
        put_str(&mut out, k, d.get(k).and_then(Value::as_str).unwrap_or(""));
    }
    let causes: Vec<Value> = d
        .get("causes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_object)
                .map(|c| {
                    // `StatusCause`: reason, message, field.
                    let mut o = Map::new();
                    for k in ["reason", "message", "field"] {
                        put_str(&mut o, k, c.get(k).and_then(Value::as_str).unwrap_or(""));
                    }
                    Value::Object(o)
                })
                .collect()
        })
        .unwrap_or_default();
    if !causes.is_empty() {
        out.insert("causes".into(), Value::Array(causes));
    }
    if let Some(n) = d
        .get("retryAfterSeconds")
        .and_then(Value::as_i64)
        .filter(|n| *n != 0)
    {
        out.insert("retryAfterSeconds".into(), json!(n));
    }
    out
}

/// Inserts a string field unless it is empty (Go's `omitempty`).
fn put_str(m: &mut Map<String, Value>, key: &str, v: &str) {
    if !v.is_empty() {
        m.insert(key.into(), json!(v));
    }
}

/// Serialises `v` as upstream's JSON encoder (`json.NewEncoder(w).Encode`) does: compact, with
/// `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c` etc., and a trailing newline. Key order is
/// the map's (serde_json keeps insertion order in this workspace).
pub fn go_json<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    if v.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(b"null");
    }
    out.push(b'\n');
    out
}

/// serde_json's compact formatter plus the HTML-safe escapes Go's encoder adds by default.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: ApiError) -> String {
        String::from_utf8(go_json(&e.to_status())).unwrap()
    }

    #[test]
    fn error_bodies_are_upstreams_bytes() {
        assert_eq!(
            body(ApiError::not_found("", "configmaps", "x")),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"x\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"x\",\"kind\":\"configmaps\"},\"code\":404}\n"
        );
        let e = ApiError::invalid(
            "apps",
            "Deployment",
            "d",
            vec![Cause::required("spec.selector")],
        );
        assert_eq!(
            body(e),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Deployment.apps \\\"d\\\" is invalid: spec.selector: Required value\",\"reason\":\"Invalid\",\"details\":{\"name\":\"d\",\"group\":\"apps\",\"kind\":\"Deployment\",\"causes\":[{\"reason\":\"FieldValueRequired\",\"message\":\"Required value\",\"field\":\"spec.selector\"}]},\"code\":422}\n"
        );
    }

    #[test]
    fn details_from_elsewhere_are_put_in_go_order() {
        let mut e = ApiError::forbidden("no");
        e.details = Some(
            json!({"causes": [{"field": "f", "message": "m", "reason": "R"}], "kind": "pods", "group": "", "name": "p"}),
        );
        assert_eq!(
            body(e),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"no\",\"reason\":\"Forbidden\",\"details\":{\"name\":\"p\",\"kind\":\"pods\",\"causes\":[{\"reason\":\"R\",\"message\":\"m\",\"field\":\"f\"}]},\"code\":403}\n"
        );
    }

    #[test]
    fn strings_are_escaped_as_go_does() {
        let out = go_json(&json!({"m": "a<b>&c\u{2028}\n\"é"}));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"m\":\"a\\u003cb\\u003e\\u0026c\\u2028\\n\\\"é\"}\n"
        );
    }

    #[test]
    fn success_status_leaves_out_empty_details() {
        assert_eq!(
            String::from_utf8(go_json(&success_status(json!({})))).unwrap(),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Success\"}\n"
        );
    }
}
