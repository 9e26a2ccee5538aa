//! Authorization, as upstream's `--authorization-mode=Node,RBAC`: members of `system:masters`
//! may do anything; a node's credentials get what the node authorizer grants; everyone else
//! what their RBAC bindings grant. Also impersonation (`kubectl --as`), which is checked with
//! the `impersonate` verb before the request runs as the impersonated user.

mod bootstrap;
pub mod escalation;
pub mod node;
pub mod rbac;

use std::sync::{Arc, RwLock};

use http::Method;
use serde_json::Value;

use super::Api;
use super::auth::UserInfo;
use super::lifecycle::{commit_update, get_current};
use super::registry::Resource;
use super::request::{ApiPath, Query};
use super::selectors::LabelSelector;
use super::status::{ApiError, ApiResult, qualified};
use rbac::{Policy, Rule};

pub use bootstrap::rule as table_rule;

/// What a request asks to do, as upstream's authorizer.Attributes.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub user: Arc<UserInfo>,
    pub verb: String,
    pub resource_request: bool,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The URL path of a non-resource request.
    pub path: String,
}

pub enum Decision {
    Allow(String),
    /// Denied, with the reason appended to the Forbidden message (often empty).
    Deny(String),
}

/// The group whose members pass every check, as upstream's privileged-group authorizer.
const MASTERS: &str = "system:masters";

/// The authorizer: the current RBAC policy, rebuilt when roles or bindings change.
#[derive(Default)]
pub struct Authorizer {
    policy: RwLock<Arc<Policy>>,
}

impl Authorizer {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn authorize(&self, api: &Api, a: &Attributes) -> Decision {
        if a.user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(String::new());
        }
        let mut node_reason = String::new();
        if let Some(node) = node::node_of(&a.user) {
            match node::authorize(api, node, a).await {
                Decision::Allow(r) => return Decision::Allow(r),
                Decision::Deny(r) => node_reason = r,
            }
        }
        match self.policy().allows(a) {
            Some(reason) => Decision::Allow(reason),
            None => Decision::Deny(node_reason),
        }
    }

    /// Allowed or not, without the reason.
    pub async fn allows(&self, api: &Api, a: &Attributes) -> bool {
        matches!(self.authorize(api, a).await, Decision::Allow(_))
    }

    /// The rules `user` holds in `namespace`, as SelfSubjectRulesReview lists them (members
    /// of `system:masters` hold everything).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return vec![
                Rule::from_json(&table_rule("* | * | *")),
                Rule::from_json(&table_rule("* | *")),
            ];
        }
        self.policy().rules_for(user, namespace)
    }
}

/// The attributes of an API request, as upstream's RequestInfoFactory derives them.
pub fn attributes(
    user: &Arc<UserInfo>,
    method: &Method,
    raw_path: &str,
    path: Option<&ApiPath>,
    query: &Query,
) -> Attributes {
    let mut a = Attributes {
        user: user.clone(),
        ..Default::default()
    };
    let Some(ApiPath::Resource(r)) = path else {
        a.verb = method.as_str().to_ascii_lowercase();
        a.path = raw_path.to_string();
        return a;
    };
    a.resource_request = true;
    a.group = r.group.clone();
    a.resource = r.resource.clone();
    a.subresource = r.subresource.clone().unwrap_or_default();
    a.name = r.name.clone().unwrap_or_default();
    a.namespace = r.namespace.clone().unwrap_or_default();
    // A namespace is in itself, so a RoleBinding there can grant reading it.
    if r.resource == "namespaces" && !a.name.is_empty() {
        a.namespace = a.name.clone();
    }
    let watching = r.legacy_watch || query.flag("watch") && query.get("watch") != Some("false");
    let named = !a.name.is_empty();
    a.verb = match *method {
        Method::GET | Method::HEAD if watching => "watch".into(),
        Method::GET | Method::HEAD if named => "get".into(),
        Method::GET | Method::HEAD => "list".into(),
        Method::POST => "create".into(),
        Method::PUT => "update".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE if named => "delete".into(),
        Method::DELETE => "deletecollection".into(),
        // Other methods (OPTIONS through a proxy) are their own verb, as upstream.
        ref other => other.as_str().to_ascii_lowercase(),
    };
    // A list or watch of one object by `metadata.name` is a request for that name.
    if !named
        && matches!(a.verb.as_str(), "list" | "watch")
        && let Some(fs) = query.get("fieldSelector")
        && let Some(name) = single_name(fs)
    {
        a.name = name.to_string();
    }
    a
}

fn single_name(field_selector: &str) -> Option<&str> {
    let mut parts = field_selector.split(',');
    let only = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    only.strip_prefix("metadata.name==")
        .or_else(|| only.strip_prefix("metadata.name="))
}

/// Upstream's Forbidden error for a denied request.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let mut msg = forbidden_message(a);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    if !a.resource_request {
        return ApiError::forbidden(format!("forbidden: {msg}"));
    }
    let resource = qualified(&a.group, &a.resource);
    let text = if a.name.is_empty() {
        format!("{resource} is forbidden: {msg}")
    } else {
        format!("{resource} \"{}\" is forbidden: {msg}", a.name)
    };
    let mut e = ApiError::forbidden(text);
    let mut d = serde_json::json!({"kind": a.resource});
    if !a.name.is_empty() {
        d["name"] = a.name.clone().into();
    }
    if !a.group.is_empty() {
        d["group"] = a.group.clone().into();
    }
    e.details = Some(d);
    e
}

fn forbidden_message(a: &Attributes) -> String {
    let user = &a.user.name;
    if !a.resource_request {
        return format!("User {user:?} cannot {} path {:?}", a.verb, a.path);
    }
    let mut resource = a.resource.clone();
    if !a.subresource.is_empty() {
        resource = format!("{resource}/{}", a.subresource);
    }
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    format!(
        "User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        a.verb, a.group
    )
}

/// Applies `Impersonate-*` headers: each requested identity must be allowed to the caller
/// with the `impersonate` verb; the request then runs as that identity.
pub async fn impersonate(
    api: &Api,
    caller: Arc<UserInfo>,
    headers: &http::HeaderMap,
) -> ApiResult<Arc<UserInfo>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect()
    };
    let user = values("impersonate-user")
        .into_iter()
        .next()
        .filter(|u| !u.is_empty());
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let extras: Vec<(String, Vec<String>)> = headers
        .keys()
        .filter_map(|k| k.as_str().strip_prefix("impersonate-extra-"))
        .map(|k| {
            let key = super::request::percent_decode(k);
            (key, values(&format!("impersonate-extra-{k}")))
        })
        .collect();
    let Some(name) = user else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(caller);
        }
        return Err(ApiError::internal(
            "requested impersonation of groups, uid or extra without impersonating a user",
        ));
    };
    let check = |resource: &str, group: &str, namespace: &str, name: &str| Attributes {
        user: caller.clone(),
        verb: "impersonate".into(),
        resource_request: true,
        namespace: namespace.into(),
        group: group.into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    };
    let mut wanted = Vec::new();
    let sa = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains(':'));
    let mut out = UserInfo {
        name: name.clone(),
        ..Default::default()
    };
    match sa {
        Some((ns, sa_name)) => {
            wanted.push(check("serviceaccounts", "", ns, sa_name));
            out.groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
        None => wanted.push(check("users", "", "", &name)),
    }
    for g in &groups {
        wanted.push(check("groups", "", "", g));
        if !out.groups.contains(g) {
            out.groups.push(g.clone());
        }
    }
    if let Some(u) = &uid {
        wanted.push(check("uids", "authentication.k8s.io", "", u));
        out.uid = u.clone();
    }
    for (key, vals) in &extras {
        for v in vals {
            let mut a = check("userextras", "authentication.k8s.io", "", v);
            a.subresource = key.clone();
            wanted.push(a);
        }
        out.extra.insert(key.clone(), vals.clone());
    }
    for a in &wanted {
        if let Decision::Deny(reason) = api.authz.authorize(api, a).await {
            return Err(forbidden(a, &reason));
        }
    }
    let implied = if name == "system:anonymous" {
        "system:unauthenticated"
    } else {
        "system:authenticated"
    };
    if !out.groups.iter().any(|g| g == implied) {
        out.groups.push(implied.into());
    }
    Ok(Arc::new(out))
}

/// Loads the policy now, then keeps it current and aggregates ClusterRoles as their
/// `aggregationRule`s say (upstream's clusterrole-aggregation controller).
pub async fn start(api: &Arc<Api>) -> anyhow::Result<()> {
    bootstrap::reconcile(api).await?;
    let from = api.store.current_rev();
    reload(api).await?;
    let prefixes = RBAC_RESOURCES
        .iter()
        .filter_map(|plural| api.registry.find(RBAC_GROUP, "v1", plural))
        .map(|res| res.prefix())
        .collect();
    let changed = crate::layout::watch_prefixes(&api.store, prefixes, from);
    let api = api.clone();
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            if let Err(e) = reload(&api).await {
                tracing::warn!("RBAC policy: {e:#}");
            }
        }
    });
    Ok(())
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The policy's resources, each under its own key prefix (`/registry/clusterroles/`...).
const RBAC_RESOURCES: [&str; 4] = [
    "clusterroles",
    "roles",
    "clusterrolebindings",
    "rolebindings",
];

async fn objects(api: &Api, resource: &str) -> anyhow::Result<(Arc<Resource>, Vec<Value>)> {
    let res = api
        .registry
        .find("rbac.authorization.k8s.io", "v1", resource)
        .ok_or_else(|| anyhow::anyhow!("{resource} not registered"))?;
    let items = api
        .store
        .list(&res.prefix(), 0, None, None)
        .await?
        .items
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect();
    Ok((res, items))
}

/// Rebuilds the policy from the store, and writes aggregated rules where they changed.
async fn reload(api: &Api) -> anyhow::Result<()> {
    let (cr_res, cluster_roles) = objects(api, "clusterroles").await?;
    let mut p = Policy::default();
    for v in &cluster_roles {
        p.add_cluster_role(v);
    }
    for v in objects(api, "roles").await?.1 {
        p.add_role(&v);
    }
    for v in objects(api, "clusterrolebindings").await?.1 {
        p.add_cluster_binding(&v);
    }
    for v in objects(api, "rolebindings").await?.1 {
        p.add_binding(&v);
    }
    *api.authz.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    for (name, rules) in aggregate(&cluster_roles) {
        let ctx =
            super::context::Ctx::internal("rbac.authorization.k8s.io", "v1", "clusterroles", None);
        let (rec, old) = get_current(api, &cr_res, &ctx, &name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut new = old.clone();
        new["rules"] = Value::Array(rules);
        // A conflict is another server sharing the datastore aggregating it too; the change
        // it made brings a reload here.
        match commit_update(api, &cr_res, &ctx, rec.rev, &old, new, None).await {
            Err(e) if e.code != 409 => anyhow::bail!("aggregating clusterrole {name}: {e}"),
            _ => {}
        }
    }
    Ok(())
}

/// The ClusterRoles whose aggregated rules differ from what they hold: each gets the rules of
/// every other ClusterRole its selectors match, in name order, without repeats.
pub fn aggregate(cluster_roles: &[Value]) -> Vec<(String, Vec<Value>)> {
    let mut sorted: Vec<&Value> = cluster_roles.iter().collect();
    sorted.sort_by_key(|v| {
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    });
    let mut out = Vec::new();
    for role in &sorted {
        let Some(selectors) = role
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
        else {
            continue;
        };
        let selectors: Vec<LabelSelector> = selectors
            .iter()
            .filter_map(|s| LabelSelector::from_object(s).ok())
            .collect();
        let name = role
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut rules: Vec<Value> = Vec::new();
        for other in &sorted {
            let other_name = other.pointer("/metadata/name").and_then(Value::as_str);
            if other_name == Some(name) {
                continue;
            }
            if !selectors.iter().any(|s| s.matches_object(other)) {
                continue;
            }
            for r in other
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
        let current = role
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if current != rules {
            out.push((name.to_string(), rules));
        }
    }
    out
}
