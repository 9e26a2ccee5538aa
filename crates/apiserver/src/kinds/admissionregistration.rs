//! Mutating/ValidatingWebhookConfigurations: upstream's defaults and validation of the webhooks
//! (the admission plugin calling them is `admission::webhook`).

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::default;
use crate::admission::webhook;
use crate::object::{check_dns_subdomain, check_label_key};
use crate::registry::Resource;
use crate::status::Cause;

pub struct WebhookConfigurations;

/// upstream's limit on a webhook's matchConditions.
const MAX_MATCH_CONDITIONS: usize = 64;

fn is_mutating(obj: &Value) -> bool {
    obj["kind"].as_str() == Some("MutatingWebhookConfiguration")
}

impl KindBehaviour for WebhookConfigurations {
    fn defaults(&self, obj: &mut Value) {
        let mutating = is_mutating(obj);
        let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
            return;
        };
        for w in hooks.iter_mut().filter(|w| w.is_object()) {
            default(w, "failurePolicy", json!("Fail"));
            default(w, "matchPolicy", json!("Equivalent"));
            default(w, "namespaceSelector", json!({}));
            default(w, "objectSelector", json!({}));
            default(w, "timeoutSeconds", json!(10));
            if mutating {
                default(w, "reinvocationPolicy", json!("Never"));
            }
            if let Some(port) = w
                .pointer_mut("/clientConfig/service")
                .filter(|s| s.is_object())
            {
                default(port, "port", json!(443));
            }
            for r in w
                .get_mut("rules")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter(|r| r.is_object())
            {
                default(r, "scope", json!("*"));
            }
        }
    }

    fn validate(&self, _res: &Resource, obj: &Value, _old: Option<&Value>, out: &mut Vec<Cause>) {
        let mutating = is_mutating(obj);
        let mut names: Vec<&str> = Vec::new();
        for (i, w) in obj["webhooks"].as_array().into_iter().flatten().enumerate() {
            let f = |field: &str| format!("webhooks[{i}].{field}");
            match w["name"].as_str().filter(|n| !n.is_empty()) {
                None => out.push(Cause::required(f("name"))),
                Some(n) => {
                    if let Some(problem) = check_dns_subdomain(n) {
                        out.push(Cause::invalid(f("name"), &json!(n), problem));
                    } else if n.split('.').count() < 3 {
                        out.push(Cause::invalid(
                            f("name"),
                            &json!(n),
                            "should be a domain with at least three segments separated by dots",
                        ));
                    }
                    if names.contains(&n) {
                        out.push(Cause::duplicate(f("name"), &json!(n)));
                    }
                    names.push(n);
                }
            }
            client_config(&w["clientConfig"], &f("clientConfig"), out);
            match w["sideEffects"].as_str() {
                None => out.push(Cause::required(f("sideEffects"))),
                Some("None" | "NoneOnDryRun") => {}
                Some(s) => out.push(Cause::unsupported(
                    f("sideEffects"),
                    &json!(s),
                    &["None", "NoneOnDryRun"],
                )),
            }
            let versions: Vec<&str> = w["admissionReviewVersions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if versions.is_empty() {
                out.push(Cause::required(f("admissionReviewVersions")));
            } else if !versions.contains(&"v1") {
                // kinglet speaks admission.k8s.io/v1 only (upstream also accepts v1beta1).
                out.push(Cause::invalid(
                    f("admissionReviewVersions"),
                    &json!(versions),
                    "must include at least one of v1",
                ));
            }
            if let Some(t) = w.get("timeoutSeconds").filter(|t| !t.is_null())
                && !t.as_i64().is_some_and(|t| (1..=30).contains(&t))
            {
                out.push(Cause::invalid(
                    f("timeoutSeconds"),
                    t,
                    "the timeout value must be between 1 and 30 seconds",
                ));
            }
            one_of(w, "failurePolicy", &["Ignore", "Fail"], &f, out);
            one_of(w, "matchPolicy", &["Exact", "Equivalent"], &f, out);
            if mutating {
                one_of(w, "reinvocationPolicy", &["Never", "IfNeeded"], &f, out);
            }
            for (j, r) in w["rules"].as_array().into_iter().flatten().enumerate() {
                rule(r, &f(&format!("rules[{j}]")), out);
            }
            match_conditions(&w["matchConditions"], &f("matchConditions"), out);
        }
    }
}

/// upstream's validateMatchConditions: at most 64, named with unique qualified names, each
/// expression compiling (with the variables webhooks offer).
fn match_conditions(list: &Value, field: &str, out: &mut Vec<Cause>) {
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.len() > MAX_MATCH_CONDITIONS {
        out.push(Cause::new(
            "FieldValueTooMany",
            field,
            format!(
                "Too many: {}: must have at most {MAX_MATCH_CONDITIONS} items",
                list.len()
            ),
        ));
    }
    let mut names: Vec<&str> = Vec::new();
    for (j, c) in list.iter().enumerate() {
        let cf = format!("{field}[{j}]");
        match c["expression"].as_str().map(str::trim).unwrap_or_default() {
            "" => out.push(Cause::required(format!("{cf}.expression"))),
            e => {
                if let Err(detail) = webhook::conditions::compile(e) {
                    out.push(Cause::invalid(
                        format!("{cf}.expression"),
                        &json!(e),
                        detail,
                    ));
                }
            }
        }
        match c["name"].as_str().filter(|n| !n.is_empty()) {
            None => out.push(Cause::required(format!("{cf}.name"))),
            Some(n) => {
                if let Some(problem) = check_label_key(n) {
                    out.push(Cause::invalid(format!("{cf}.name"), &json!(n), problem));
                }
                if names.contains(&n) {
                    out.push(Cause::duplicate(format!("{cf}.name"), &json!(n)));
                }
                names.push(n);
            }
        }
    }
}

fn one_of(
    w: &Value,
    field: &str,
    allowed: &[&str],
    f: &dyn Fn(&str) -> String,
    out: &mut Vec<Cause>,
) {
    if let Some(v) = w.get(field).filter(|v| !v.is_null())
        && !v.as_str().is_some_and(|s| allowed.contains(&s))
    {
        out.push(Cause::unsupported(f(field), v, allowed));
    }
}

fn client_config(cc: &Value, field: &str, out: &mut Vec<Cause>) {
    let url = cc.get("url").filter(|u| !u.is_null());
    let service = cc.get("service").filter(|s| !s.is_null());
    match (url, service) {
        (Some(_), Some(_)) | (None, None) => out.push(Cause::new(
            "FieldValueRequired",
            field,
            "Required value: exactly one of url or service is required",
        )),
        (Some(u), None) => {
            let parsed = u.as_str().and_then(|s| s.parse::<http::Uri>().ok());
            match parsed {
                Some(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
                Some(uri) if uri.scheme_str() != Some("https") => out.push(Cause::invalid(
                    format!("{field}.url"),
                    u,
                    "'https' is the only allowed URL scheme",
                )),
                _ => out.push(Cause::invalid(
                    format!("{field}.url"),
                    u,
                    "host must be specified",
                )),
            }
        }
        (None, Some(s)) => {
            for k in ["namespace", "name"] {
                if s[k].as_str().is_none_or(str::is_empty) {
                    out.push(Cause::required(format!("{field}.service.{k}")));
                }
            }
            if let Some(p) = s["path"].as_str()
                && !p.is_empty()
                && !p.starts_with('/')
            {
                out.push(Cause::invalid(
                    format!("{field}.service.path"),
                    &json!(p),
                    "must start with a '/'",
                ));
            }
            if let Some(p) = s.get("port").filter(|p| !p.is_null())
                && !p.as_i64().is_some_and(|p| (1..=65535).contains(&p))
            {
                out.push(Cause::invalid(
                    format!("{field}.service.port"),
                    p,
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

fn rule(r: &Value, field: &str, out: &mut Vec<Cause>) {
    let list = |k: &str| -> Vec<&str> {
        r[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    for op in list("operations") {
        if !["*", "CREATE", "UPDATE", "DELETE", "CONNECT"].contains(&op) {
            out.push(Cause::unsupported(
                format!("{field}.operations"),
                &json!(op),
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            ));
        }
    }
    for k in ["apiGroups", "apiVersions", "resources"] {
        if list(k).is_empty() {
            out.push(Cause::required(format!("{field}.{k}")));
        }
    }
    if let Some(s) = r.get("scope").filter(|s| !s.is_null())
        && !s
            .as_str()
            .is_some_and(|s| ["*", "Cluster", "Namespaced"].contains(&s))
    {
        out.push(Cause::unsupported(
            format!("{field}.scope"),
            s,
            &["*", "Cluster", "Namespaced"],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let res = crate::registry::builtins()
            .into_iter()
            .find(|r| r.plural == "validatingwebhookconfigurations")
            .unwrap();
        WebhookConfigurations.validate(&res, obj, None, &mut out);
        out.iter().map(Cause::describe).collect()
    }

    fn hook(extra: Value) -> Value {
        let mut w = json!({
            "name": "a.kinglet.test",
            "clientConfig": {"url": "https://example.com/x"},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"]}],
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            w[k] = v.clone();
        }
        w
    }

    fn config(hooks: Vec<Value>) -> Value {
        json!({"kind": "ValidatingWebhookConfiguration", "metadata": {"name": "c"}, "webhooks": hooks})
    }

    #[test]
    fn webhooks_are_validated_as_upstream() {
        assert!(causes(&config(vec![hook(json!({}))])).is_empty());
        let one = |extra: Value| causes(&config(vec![hook(extra)]));
        assert_eq!(
            one(json!({"sideEffects": "Some"})),
            [
                "webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\""
            ]
        );
        assert_eq!(
            one(json!({"sideEffects": null})),
            ["webhooks[0].sideEffects: Required value"]
        );
        assert_eq!(
            one(json!({"timeoutSeconds": 31})),
            [
                "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds"
            ]
        );
        assert_eq!(
            one(json!({"admissionReviewVersions": ["v1beta1"]})).len(),
            1
        );
        assert_eq!(
            one(json!({"clientConfig": {"url": "http://example.com/"}})),
            [
                "webhooks[0].clientConfig.url: Invalid value: \"http://example.com/\": 'https' is the only allowed URL scheme"
            ]
        );
        assert_eq!(
            one(json!({"clientConfig": {"url": "https://e.com/",
                "service": {"namespace": "a", "name": "b"}}})),
            ["webhooks[0].clientConfig: Required value: exactly one of url or service is required"]
        );
        assert_eq!(
            one(json!({"clientConfig": {"service": {"name": "b"}}})),
            ["webhooks[0].clientConfig.service.namespace: Required value"]
        );
        assert_eq!(one(json!({"name": "short.name"})).len(), 1);
        assert_eq!(
            causes(&config(vec![hook(json!({})), hook(json!({}))])),
            ["webhooks[1].name: Duplicate value: \"a.kinglet.test\""]
        );
    }

    #[test]
    fn match_conditions_are_validated_as_upstream() {
        let with = |conds: Value| causes(&config(vec![hook(json!({"matchConditions": conds}))]));
        assert!(
            with(
                json!([{"name": "is-create", "expression": "request.operation == 'CREATE'"},
            {"name": "team", "expression": "object.metadata.labels.exists(k, k == 'team')"}])
            )
            .is_empty()
        );
        let got = with(json!([{"name": "bad", "expression": "object.metadata.name =="}]));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with(
                "webhooks[0].matchConditions[0].expression: Invalid value: \"object.metadata.name ==\": compilation failed: ERROR: <input>:1:"
            ),
            "{got:?}"
        );
        let got = with(json!([{"name": "authz",
            "expression": "authorizer.requestResource.check('get').allowed()"}]));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("webhooks[0].matchConditions[0].expression: Invalid value: ")
                && got[0].contains("kinglet does not support `authorizer` in matchConditions"),
            "{got:?}"
        );
        assert_eq!(
            with(
                json!([{"name": "a", "expression": "true"}, {"name": "a", "expression": "true"},
                {"name": "-x", "expression": " "}, {"expression": "true"}])
            ),
            [
                "webhooks[0].matchConditions[1].name: Duplicate value: \"a\"",
                "webhooks[0].matchConditions[2].expression: Required value",
                &format!(
                    "webhooks[0].matchConditions[2].name: Invalid value: \"-x\": {}",
                    check_label_key("-x").unwrap()
                ),
                "webhooks[0].matchConditions[3].name: Required value",
            ]
        );
        let many: Vec<Value> = (0..65)
            .map(|i| json!({"name": format!("c{i}"), "expression": "true"}))
            .collect();
        assert_eq!(
            with(json!(many)),
            ["webhooks[0].matchConditions: Too many: 65: must have at most 64 items"]
        );
    }

    #[test]
    fn defaults_as_upstream() {
        let mut c = config(vec![hook(
            json!({"clientConfig": {"service": {"namespace": "a", "name": "b"}}}),
        )]);
        c["kind"] = json!("MutatingWebhookConfiguration");
        WebhookConfigurations.defaults(&mut c);
        let w = &c["webhooks"][0];
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["timeoutSeconds"], 10);
        assert_eq!(w["reinvocationPolicy"], "Never");
        assert_eq!(w["clientConfig"]["service"]["port"], 443);
        assert_eq!(w["rules"][0]["scope"], "*");
        assert_eq!(w["namespaceSelector"], json!({}));
    }
}
