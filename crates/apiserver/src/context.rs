//! Per-request context: who is asking, what they accept, and the parsed query.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::auth::UserInfo;
use super::request::{Query, ResourcePath};
use super::status::{ApiError, ApiResult};

mod yaml;

pub struct Ctx {
    pub user: Arc<UserInfo>,
    pub query: Query,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
    pub path: ResourcePath,
    /// `Warning` headers to send back (unknown fields under fieldValidation=Warn, ...).
    pub warnings: std::sync::Mutex<Vec<String>>,
}

/// Largest request body accepted, as upstream (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

impl Ctx {
    pub fn dry_run(&self) -> ApiResult<bool> {
        let all = self.query.all("dryRun");
        match all
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => Ok(false),
            ["All"] => Ok(true),
            [other, ..] => Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}: supported values: \"All\""
            ))),
        }
    }

    /// The field manager for this write: explicit `fieldManager`, else the user agent's first word.
    pub fn field_manager(&self) -> ApiResult<String> {
        if let Some(m) = self.query.get("fieldManager") {
            if m.len() > 128 {
                return Err(ApiError::invalid(
                    "",
                    "PatchOptions",
                    "",
                    vec![super::status::Cause::invalid(
                        "fieldManager",
                        &Value::String(m.into()),
                        "must be no more than 128 characters",
                    )],
                ));
            }
            return Ok(m.to_string());
        }
        let ua = self
            .user_agent
            .split('/')
            .next()
            .unwrap_or("unknown")
            .trim();
        Ok(if ua.is_empty() {
            "unknown".into()
        } else {
            ua.chars().take(128).collect()
        })
    }

    /// `Strict`, `Warn` (default) or `Ignore`.
    pub fn field_validation(&self) -> ApiResult<&str> {
        match self.query.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok("Warn"),
            Some("Strict") => Ok("Strict"),
            Some("Ignore") => Ok("Ignore"),
            Some(o) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {o}"
            ))),
        }
    }

    pub fn warn(&self, msg: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
    }

    pub fn wants_table(&self) -> bool {
        self.accept.split(',').any(|a| a.contains("as=Table"))
    }

    /// Decodes a request body (JSON, YAML or Kubernetes protobuf) into a JSON value.
    pub fn decode_body(&self, body: &Bytes) -> ApiResult<Value> {
        if body.len() > MAX_BODY {
            return Err(ApiError::too_large());
        }
        let ct = self
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let v = match ct {
            "" | "application/json" | "*/*" => decode_json(body),
            "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
            "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body),
            other => Err(ApiError::unsupported_media_type(other)),
        }?;
        // Every body decoded here is an object; handlers may index it as one.
        if !v.is_object() {
            return Err(ApiError::bad_request(format!(
                "the object provided is unrecognized or invalid: expected an object, not {}",
                match v {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            )));
        }
        Ok(v)
    }
}

pub fn decode_json(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    serde_json::from_slice::<Value>(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized or invalid: {e}"
        ))
    })
}

/// What a YAML body may decode to, in bytes of memory per byte of body (and at least
/// `YAML_MIN_BUDGET`): plain YAML stays well under it, aliases repeated past it are refused.
const YAML_BUDGET_PER_BYTE: usize = 64;
const YAML_MIN_BUDGET: usize = 4 << 20;

pub fn decode_yaml(body: &[u8]) -> ApiResult<Value> {
    let budget = body
        .len()
        .saturating_mul(YAML_BUDGET_PER_BYTE)
        .max(YAML_MIN_BUDGET);
    let v: Value = yaml::from_slice(body, budget)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?;
    if v.is_null() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    Ok(v)
}

impl Ctx {
    /// A copy of this context for a sub-operation (same user, query and headers).
    pub fn clone_shallow(&self) -> Ctx {
        Ctx {
            user: self.user.clone(),
            query: self.query.clone(),
            accept: self.accept.clone(),
            content_type: self.content_type.clone(),
            user_agent: self.user_agent.clone(),
            path: self.path.clone(),
            warnings: std::sync::Mutex::new(Vec::new()),
        }
    }
}
