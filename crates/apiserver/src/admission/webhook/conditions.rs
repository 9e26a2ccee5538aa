//! A webhook's `matchConditions`: CEL expressions over `object`, `oldObject` and `request`
//! deciding whether the webhook is called (upstream's webhook/matchconditions matcher).
//!
//! Compiled when the configuration is validated (errors name the field) and once per
//! configuration by the webhook cache; evaluated per request. `authorizer` is not offered: no
//! authorizer library is built on the `cel` crate, so expressions naming it are refused.
//! Offered: CEL's standard library with the strings, lists and math extensions. Kubernetes' own
//! libraries (`quantity()`, `url()`, `ip()`/`cidr()`, `find()`, ...) are not: the crate cannot
//! tell at compile time which functions exist, so such calls fail when evaluated (an error,
//! which the failure policy decides).
//!
//! Not bounded: the `cel` crate has no cost budget (upstream caps each evaluation). The inputs
//! are kept as they are (an object is at most the request size limit); a hostile expression,
//! which only a configuration writer can install, can spend CPU but not crash the server.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value;

/// Variables a condition may use; `authorizer` is upstream's fourth.
const VARIABLES: &[&str] = &["object", "oldObject", "request"];

/// Names that resolve without a variable: CEL's type identifiers and function namespaces.
const BUILTIN_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "duration",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "timestamp",
    "type",
    "uint",
    "optional",
    "optional_type",
    "math",
    "google",
];

/// The standard library and the extensions Kubernetes' base environment also has.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Registering a fixed set of extensions on a fresh environment cannot conflict; should a
    // newer crate disagree, the extension is left out rather than failing every webhook.
    for ext in [
        cel::extensions::strings as fn(&mut Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
    ] {
        if let Err(e) = env.add_extension(ext) {
            tracing::warn!("CEL extension left out: {e}");
        }
    }
    Arc::new(env)
});

/// One compiled condition.
pub(crate) struct Condition {
    pub name: String,
    pub expression: String,
    program: Program,
}

/// Compiles one expression as upstream's configuration validation does: the message is the
/// `Invalid value` detail of `...matchConditions[j].expression`.
pub(crate) fn compile(expression: &str) -> Result<Program, String> {
    let program = ENV
        .compile(expression.trim())
        .map_err(|e| format!("compilation failed: {e}"))?;
    let mut free = Vec::new();
    free_names(program.expression(), &mut Vec::new(), &mut free);
    if free.iter().any(|(n, _)| *n == "authorizer") {
        return Err(
            "compilation failed: kinglet does not support `authorizer` in matchConditions \
             (its webhooks are called without authorization checks in CEL)"
                .into(),
        );
    }
    if let Some((name, id)) = free
        .iter()
        .find(|(n, _)| !VARIABLES.contains(n) && !BUILTIN_NAMES.contains(n))
    {
        let start = program.source_info().offset_for(*id).map_or(0, |(s, _)| s);
        let (line, col) = line_col(expression.trim(), start as usize);
        return Err(format!(
            "compilation failed: ERROR: <input>:{line}:{col}: undeclared reference to '{name}' (in container '')"
        ));
    }
    Ok(program)
}

/// 1-based line and column of the `offset`th character, as CEL's error messages print them.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before: Vec<char> = source.chars().take(offset).collect();
    let line = 1 + before.iter().filter(|c| **c == '\n').count();
    let col = 1 + before.iter().rev().take_while(|c| **c != '\n').count();
    (line, col)
}

/// Identifiers of `e` not bound by a comprehension (`x` in `list.all(x, ...)`). The target of a
/// call is skipped when it is a bare name (`math.greatest(...)` names a namespace) unless it is
/// `authorizer`, which is always reported.
fn free_names<'e>(e: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<(&'e str, u64)>) {
    match &e.expr {
        Expr::Ident(name) => {
            if !bound.contains(&name.as_str()) && !name.starts_with('@') {
                out.push((name, e.id));
            }
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                match &t.expr {
                    Expr::Ident(name) if name != "authorizer" => {}
                    _ => free_names(t, bound, out),
                }
            }
            for a in &call.args {
                free_names(a, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            free_names(&c.iter_range, bound, out);
            free_names(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                bound.push(v);
            }
            bound.push(&c.accu_var);
            free_names(&c.loop_cond, bound, out);
            free_names(&c.loop_step, bound, out);
            free_names(&c.result, bound, out);
            bound.truncate(before);
        }
        Expr::List(l) => l.elements.iter().for_each(|x| free_names(x, bound, out)),
        Expr::Map(m) => m.entries.iter().for_each(|x| entry(&x.expr, bound, out)),
        Expr::Struct(s) => s.entries.iter().for_each(|x| entry(&x.expr, bound, out)),
        Expr::Select(s) => free_names(&s.operand, bound, out),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry<'e>(e: &'e EntryExpr, bound: &mut Vec<&'e str>, out: &mut Vec<(&'e str, u64)>) {
    match e {
        EntryExpr::StructField(f) => free_names(&f.value, bound, out),
        EntryExpr::MapEntry(m) => {
            free_names(&m.key, bound, out);
            free_names(&m.value, bound, out);
        }
    }
}

/// A webhook's conditions, compiled; an error when one does not compile (a configuration
/// stored before it was validated): evaluating then fails, and the failure policy decides.
pub(crate) fn from_spec(hook: &Value) -> Result<Vec<Condition>, String> {
    hook["matchConditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let expression = c["expression"].as_str().unwrap_or_default().to_string();
            let program =
                compile(&expression).map_err(|e| format!("matchConditions {name:?}: {e}"))?;
            Ok(Condition {
                name,
                expression,
                program,
            })
        })
        .collect()
}

/// The outcome of a webhook's conditions for one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// All true (or there are none): call the webhook.
    Call,
    /// This condition is false: skip the webhook, whatever errors the others had.
    Skip(String),
    /// No condition is false but some failed: the failure policy decides.
    Error(String),
}

/// Evaluates all conditions as upstream's matcher: any false skips the webhook; else any error
/// is reported (joined as upstream's aggregate error); else it is called. `request` is the
/// AdmissionRequest (object and oldObject are read from it).
pub(crate) fn evaluate(conditions: &[Condition], request: &Value) -> Outcome {
    if conditions.is_empty() {
        return Outcome::Call;
    }
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_as_val("object", to_cel(&request["object"]));
    ctx.add_variable_as_val("oldObject", to_cel(&request["oldObject"]));
    ctx.add_variable_as_val("request", to_cel(&cel_request(request)));
    let mut errors = Vec::new();
    for c in conditions {
        match c.program.execute(&ctx) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => return Outcome::Skip(c.name.clone()),
            Ok(other) => errors.push(format!(
                "expression '{}' resulted in error: must evaluate to bool, got {}",
                c.expression,
                other.type_of()
            )),
            Err(e) => errors.push(format!(
                "expression '{}' resulted in error: {e}",
                c.expression
            )),
        }
    }
    match errors.len() {
        0 => Outcome::Call,
        1 => Outcome::Error(errors.remove(0)),
        _ => Outcome::Error(format!("[{}]", errors.join(", "))),
    }
}

/// The `request` variable: the AdmissionRequest without the objects, with the fields Go's
/// struct always has (empty strings, lists and maps) present.
fn cel_request(request: &Value) -> Value {
    let mut r = request.clone();
    if let Some(m) = r.as_object_mut() {
        m.remove("object");
        m.remove("oldObject");
        for k in ["subResource", "requestSubResource", "namespace", "name"] {
            m.entry(k).or_insert(Value::from(""));
        }
    }
    if let Some(u) = r.get_mut("userInfo").and_then(Value::as_object_mut) {
        u.entry("uid").or_insert(Value::from(""));
        u.entry("groups").or_insert(Value::Array(Vec::new()));
        u.entry("extra")
            .or_insert(Value::Object(Default::default()));
    }
    r
}

/// JSON as CEL sees it: integers as `int` (`uint` only above i64), other numbers as `double`;
/// fields set to null are left out, as upstream's typed objects omit them (`has()` is false).
/// Built as the interpreter's values directly: no intermediate copy of the object.
fn to_cel(v: &Value) -> Box<dyn Val> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Box::new(CelString::from(s.clone())),
        Value::Array(a) => Box::new(CelList::from(a.iter().map(to_cel).collect::<Vec<_>>())),
        Value::Object(o) => {
            let map: HashMap<CelMapKey, Box<dyn Val>> = o
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (CelMapKey::from(k.clone()), to_cel(v)))
                .collect();
            Box::new(CelMap::from(map))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conditions(exprs: &[&str]) -> Vec<Condition> {
        let spec = json!({"matchConditions": exprs.iter().enumerate()
            .map(|(i, e)| json!({"name": format!("c{i}"), "expression": e}))
            .collect::<Vec<_>>()});
        from_spec(&spec).unwrap()
    }

    fn request(op: &str, labels: Value) -> Value {
        json!({
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": "a",
            "namespace": "default",
            "operation": op,
            "userInfo": {"username": "alice", "groups": ["devs", "system:authenticated"]},
            "object": {"metadata": {"name": "a", "labels": labels}, "data": {"n": "1"}},
            "oldObject": null,
            "dryRun": false,
        })
    }

    #[test]
    fn conditions_select_requests_by_object_and_request() {
        let c = conditions(&[
            "request.operation == 'CREATE'",
            "has(object.metadata.labels) && object.metadata.labels['team'] == 'a'",
            "'devs' in request.userInfo.groups && request.subResource == ''",
            "oldObject == null",
        ]);
        assert_eq!(
            evaluate(&c, &request("CREATE", json!({"team": "a"}))),
            Outcome::Call
        );
        assert_eq!(
            evaluate(&c, &request("UPDATE", json!({"team": "a"}))),
            Outcome::Skip("c0".into())
        );
        assert_eq!(
            evaluate(&c, &request("CREATE", json!({"team": "b"}))),
            Outcome::Skip("c1".into())
        );
        // A null field is absent, as in upstream's typed objects.
        assert_eq!(
            evaluate(&c, &request("CREATE", Value::Null)),
            Outcome::Skip("c1".into())
        );
        // Comprehensions, string extensions and JSON integers as `int`.
        let c = conditions(&[
            "object.metadata.labels.exists(k, k.startsWith('app.'))",
            "object.metadata.labels.all(k, object.metadata.labels[k].lowerAscii() == 'x')",
            "size(object.data) == 1",
        ]);
        assert_eq!(
            evaluate(&c, &request("CREATE", json!({"app.io/n": "X"}))),
            Outcome::Call
        );
        assert_eq!(
            evaluate(&c, &request("CREATE", json!({"other": "X"}))),
            Outcome::Skip("c0".into())
        );
    }

    #[test]
    fn errors_and_non_bools_are_reported_unless_a_condition_is_false() {
        let c = conditions(&["object.metadata.missing == 'x'", "request.name"]);
        let Outcome::Error(msg) = evaluate(&c, &request("CREATE", json!({}))) else {
            panic!("expected an error");
        };
        assert!(
            msg.starts_with("[expression 'object.metadata.missing == 'x'' resulted in error: ")
                && msg.contains("must evaluate to bool, got string"),
            "{msg}"
        );
        // Kubernetes' own libraries are missing: their calls fail when evaluated.
        let c = conditions(&["quantity('1Gi') == quantity('1024Mi')"]);
        assert!(matches!(
            evaluate(&c, &request("CREATE", json!({}))),
            Outcome::Error(_)
        ));
        let c = conditions(&["math.greatest(1, 2) == 2 && 'a,b'.split(',').size() == 2"]);
        assert_eq!(evaluate(&c, &request("CREATE", json!({}))), Outcome::Call);
        // A false condition wins over the errors of the others, as upstream.
        let c = conditions(&["object.metadata.missing == 'x'", "false"]);
        assert_eq!(
            evaluate(&c, &request("CREATE", json!({}))),
            Outcome::Skip("c1".into())
        );
        // Hostile values do not panic: huge numbers, deep-ish nesting, division by zero.
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let mut r = request("CREATE", json!({}));
        r["object"]["spec"] = json!({"big": u64::MAX, "f": 1.5e308, "deep": deep});
        let c = conditions(&[
            "object.spec.big > 0u",
            "object.spec.f * 10.0 > 0.0",
            "1 / (size(object.spec.deep) - 1) == 0",
        ]);
        assert!(matches!(evaluate(&c, &r), Outcome::Error(_)));
    }

    #[test]
    fn compile_refuses_syntax_errors_undeclared_names_and_authorizer() {
        assert!(compile("request.operation == 'CREATE'").is_ok());
        assert!(compile("[1, 2].all(x, x > 0) && int('1') == 1 && type(1) == int").is_ok());
        let e = compile("1 +").unwrap_err();
        assert!(
            e.starts_with("compilation failed: ERROR: <input>:1:"),
            "{e}"
        );
        let e = compile("params.x == 1").unwrap_err();
        assert_eq!(
            e,
            "compilation failed: ERROR: <input>:1:1: undeclared reference to 'params' (in container '')"
        );
        let e = compile("object != null &&\n  foo").unwrap_err();
        assert!(
            e.contains("<input>:2:3: undeclared reference to 'foo'"),
            "{e}"
        );
        for expr in [
            "authorizer.group('').resource('pods').check('get').allowed()",
            "[1].exists(x, authorizer == x)",
        ] {
            let e = compile(expr).unwrap_err();
            assert!(
                e.contains("kinglet does not support `authorizer` in matchConditions"),
                "{e}"
            );
        }
        // A comprehension's variable is not a free name, even when named like one.
        assert!(compile("[1].all(authorizer, authorizer > 0)").is_ok());
    }
}
