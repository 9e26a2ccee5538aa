//! Escalation prevention, as upstream's RBAC storage: a Role or ClusterRole may hold, and a
//! binding may grant, only rules its author already holds, unless the author may `escalate`
//! (roles) or `bind` (the referenced role).

use serde_json::Value;

use super::super::Api;
use super::super::context::Ctx;
use super::super::registry::Resource;
use super::super::status::{ApiError, ApiResult, qualified};
use super::rbac::{Rule, describe_rule, uncovered};
use super::{Attributes, MASTERS, table_rule};

const GROUP: &str = "rbac.authorization.k8s.io";

pub async fn admit(api: &Api, res: &Resource, ctx: &Ctx, obj: &Value) -> ApiResult<()> {
    if res.group != GROUP || ctx.user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let namespace = ctx.path.namespace.clone().unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let may = |verb: &str, resource: &str, name: &str| Attributes {
        user: ctx.user.clone(),
        verb: verb.into(),
        resource_request: true,
        namespace: namespace.clone(),
        group: GROUP.into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    };
    let wanted: Vec<Rule> = match res.plural.as_str() {
        "roles" | "clusterroles" => {
            if api
                .authz
                .allows(api, &may("escalate", &res.plural, &name))
                .await
            {
                return Ok(());
            }
            if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                // Aggregation can pull in any rule: only full authority may set it.
                let full = [
                    Rule::from_json(&table_rule("* | * | *")),
                    Rule::from_json(&table_rule("* | *")),
                ];
                let held = api.authz.rules_for(&ctx.user, &namespace);
                if !uncovered(&held, &full).is_empty() {
                    return Err(forbidden(
                        res,
                        &name,
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
                return Ok(());
            }
            obj.get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(Rule::from_json)
                .collect()
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = obj.pointer("/roleRef/kind").and_then(Value::as_str);
            let role = obj
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let (cluster_role, role_resource) = match kind {
                Some("ClusterRole") => (true, "clusterroles"),
                _ => (false, "roles"),
            };
            if api
                .authz
                .allows(api, &may("bind", role_resource, role))
                .await
            {
                return Ok(());
            }
            let scope = (!namespace.is_empty()).then_some(namespace.as_str());
            match api
                .authz
                .policy()
                .referenced_rules(cluster_role, role, scope)
            {
                Some(rules) => rules,
                None => {
                    return Err(ApiError::not_found(GROUP, role_resource, role));
                }
            }
        }
        _ => return Ok(()),
    };
    let held = api.authz.rules_for(&ctx.user, &namespace);
    let missing = uncovered(&held, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = ctx.user.groups.iter().map(|g| format!("{g:?}")).collect();
    let lines: Vec<String> = missing.iter().map(describe_rule).collect();
    Err(forbidden(
        res,
        &name,
        format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            ctx.user.name,
            groups.join(" "),
            lines.join("\n")
        ),
    ))
}

fn forbidden(res: &Resource, name: &str, msg: String) -> ApiError {
    let mut e = ApiError::forbidden(format!(
        "{} {name:?} is forbidden: {msg}",
        qualified(&res.group, &res.plural)
    ));
    e.details = Some(serde_json::json!({"name": name, "group": res.group, "kind": res.plural}));
    e
}
