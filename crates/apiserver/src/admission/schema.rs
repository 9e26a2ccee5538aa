//! OpenAPI schemas of the built-in kinds (generated from `k8s-openapi`) and the unknown-field
//! check behind `fieldValidation`.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use crate::context::Ctx;
use crate::registry::{Resource, builtins};
use crate::status::{ApiError, ApiResult};

pub const REF_PREFIX: &str = "#/components/schemas/";

/// Every schema definition reachable from the built-in kinds, keyed by definition name.
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        for r in builtins() {
            if let Some(f) = r.schema {
                f(&mut generator);
            }
        }
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
        generator.subschema_for::<k8s_openapi::api::policy::v1::Eviction>();
        generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>();
        generator.take_definitions(true).into_iter().collect()
    })
}

/// Follows a `$ref` to its definition.
pub fn resolve(schema: &Value) -> &Value {
    let mut cur = schema;
    for _ in 0..16 {
        match cur
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF_PREFIX))
        {
            Some(name) => match definitions().get(name) {
                Some(d) => cur = d,
                None => return cur,
            },
            None => {
                // `allOf: [{$ref}]` wraps a reference that carries a description.
                match cur
                    .get("allOf")
                    .and_then(Value::as_array)
                    .filter(|a| a.len() == 1)
                {
                    Some(a) => cur = &a[0],
                    None => return cur,
                }
            }
        }
    }
    cur
}

/// Paths of fields in `value` that `schema` does not know.
pub fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(schema);
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    match value {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in m {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => unknown_fields(s, v, &child, out),
                    (None, Some(a)) => unknown_fields(a, v, &child, out),
                    (None, None) if props.is_some() => out.push(child),
                    _ => {}
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, v) in a.iter().enumerate() {
                    unknown_fields(items, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Applies `fieldValidation` to a built-in object: Strict fails, Warn warns, Ignore ignores.
pub fn check_unknown_fields(res: &Resource, ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    let mode = ctx.field_validation()?;
    if mode == "Ignore" || res.schema.is_none() {
        return Ok(());
    }
    let Some(root) = definitions().get(&res.definition_name()) else {
        return Ok(());
    };
    let mut unknown = Vec::new();
    unknown_fields(root, obj, "", &mut unknown);
    report_unknown(ctx, mode, unknown)
}

/// Reports unknown fields per the validation mode.
pub fn report_unknown(ctx: &Ctx, mode: &str, unknown: Vec<String>) -> ApiResult<()> {
    if unknown.is_empty() {
        return Ok(());
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == "Strict" {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        )));
    }
    for m in msgs {
        ctx.warn(m);
    }
    Ok(())
}
