//! RBAC with upstream's semantics: rules, subjects, the bindings that join them, and the
//! coverage check that keeps anyone from granting what they do not hold.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Attributes, UserInfo};

/// One PolicyRule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub urls: Vec<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|s| s == want)
}

fn has_or_star(list: &[String], want: &str) -> bool {
    list.iter().any(|s| s == "*" || s == want)
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v.get("verbs")),
            groups: strings(v.get("apiGroups")),
            resources: strings(v.get("resources")),
            names: strings(v.get("resourceNames")),
            urls: strings(v.get("nonResourceURLs")),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"verbs": self.verbs});
        if !self.urls.is_empty() {
            v["nonResourceURLs"] = json!(self.urls);
            return v;
        }
        v["apiGroups"] = json!(self.groups);
        v["resources"] = json!(self.resources);
        if !self.names.is_empty() {
            v["resourceNames"] = json!(self.names);
        }
        v
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !has_or_star(&self.verbs, &a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.urls.iter().any(|u| url_matches(u, &a.path));
        }
        has_or_star(&self.groups, &a.group)
            && self.resource_matches(&a.resource, &a.subresource)
            && (self.names.is_empty() || has(&self.names, &a.name))
    }

    fn resource_matches(&self, resource: &str, sub: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if sub.is_empty() {
                return r == resource;
            }
            // `pods/log`, or `*/log` for that subresource of every resource.
            r.strip_prefix(resource)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|s| s == sub)
                || r.strip_prefix("*/").is_some_and(|s| s == sub)
        })
    }
}

/// `/healthz` matches itself; `/apis/*` every path under `/apis/`.
fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

impl Subject {
    /// A binding's subject; a ServiceAccount without namespace is in the binding's namespace.
    fn from_json(v: &Value, binding_ns: &str) -> Option<Subject> {
        let name = v.get("name")?.as_str()?.to_string();
        match v.get("kind")?.as_str()? {
            "User" => Some(Subject::User(name)),
            "Group" => Some(Subject::Group(name)),
            "ServiceAccount" => Some(Subject::ServiceAccount {
                namespace: v
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns)
                    .to_string(),
                name,
            }),
            _ => None,
        }
    }

    fn applies_to(&self, user: &UserInfo) -> bool {
        match self {
            Subject::User(n) => *n == user.name,
            Subject::Group(g) => user.groups.iter().any(|ug| ug == g),
            Subject::ServiceAccount { namespace, name } => user
                .name
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(ns, n)| !namespace.is_empty() && ns == namespace && n == name),
        }
    }

    fn describe(&self) -> String {
        match self {
            Subject::User(n) => format!("User {n:?}"),
            Subject::Group(g) => format!("Group {g:?}"),
            Subject::ServiceAccount { namespace, name } => {
                format!("ServiceAccount \"{name}/{namespace}\"")
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Binding {
    name: String,
    subjects: Vec<Subject>,
    /// `Role` (in the binding's namespace) or `ClusterRole`.
    cluster_role: bool,
    role: String,
}

impl Binding {
    fn from_json(v: &Value, ns: &str) -> Binding {
        Binding {
            name: str_at(v, "/metadata/name").to_string(),
            subjects: v
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| Subject::from_json(s, ns))
                .collect(),
            cluster_role: str_at(v, "/roleRef/kind") == "ClusterRole",
            role: str_at(v, "/roleRef/name").to_string(),
        }
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn rules_of(v: &Value) -> Arc<Vec<Rule>> {
    Arc::new(
        v.get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(Rule::from_json)
            .collect(),
    )
}

/// Every Role, ClusterRole and binding, indexed for the authorizer.
#[derive(Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

/// Where a rule came from, for the reason upstream gives with a decision.
pub struct Source<'a> {
    binding: &'a Binding,
    namespace: Option<&'a str>,
    subject: &'a Subject,
}

impl Source<'_> {
    pub fn describe(&self) -> String {
        let b = self.binding;
        let role_kind = if b.cluster_role {
            "ClusterRole"
        } else {
            "Role"
        };
        match self.namespace {
            Some(ns) => format!(
                "RoleBinding \"{}/{ns}\" of {role_kind} {:?} to {}",
                b.name,
                b.role,
                self.subject.describe()
            ),
            None => format!(
                "ClusterRoleBinding {:?} of {role_kind} {:?} to {}",
                b.name,
                b.role,
                self.subject.describe()
            ),
        }
    }
}

impl Policy {
    pub fn add_cluster_role(&mut self, v: &Value) {
        self.cluster_roles
            .insert(str_at(v, "/metadata/name").into(), rules_of(v));
    }
    pub fn add_role(&mut self, v: &Value) {
        let key = (
            str_at(v, "/metadata/namespace").into(),
            str_at(v, "/metadata/name").into(),
        );
        self.roles.insert(key, rules_of(v));
    }
    pub fn add_cluster_binding(&mut self, v: &Value) {
        self.cluster_bindings.push(Binding::from_json(v, ""));
    }
    pub fn add_binding(&mut self, v: &Value) {
        let ns = str_at(v, "/metadata/namespace");
        self.bindings
            .entry(ns.to_string())
            .or_default()
            .push(Binding::from_json(v, ns));
    }

    fn role_rules(&self, b: &Binding, ns: Option<&str>) -> Option<&Arc<Vec<Rule>>> {
        match (b.cluster_role, ns) {
            (true, _) => self.cluster_roles.get(&b.role),
            (false, Some(ns)) => self.roles.get(&(ns.to_string(), b.role.clone())),
            (false, None) => None,
        }
    }

    /// Calls `visit` with every rule that applies to `user` in `namespace` (cluster-wide rules
    /// always; the namespace's RoleBindings when one is given) until it returns true.
    pub fn visit<'a>(
        &'a self,
        user: &UserInfo,
        namespace: &'a str,
        mut visit: impl FnMut(&Source<'a>, &'a Rule) -> bool,
    ) -> bool {
        let scoped = (!namespace.is_empty())
            .then(|| self.bindings.get(namespace).map(|b| (namespace, b)))
            .flatten();
        let all = self.cluster_bindings.iter().map(|b| (None, b)).chain(
            scoped
                .into_iter()
                .flat_map(|(ns, bs)| bs.iter().map(move |b| (Some(ns), b))),
        );
        for (ns, b) in all {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user)) else {
                continue;
            };
            let Some(rules) = self.role_rules(b, ns) else {
                continue;
            };
            let source = Source {
                binding: b,
                namespace: ns,
                subject,
            };
            for r in rules.iter() {
                if visit(&source, r) {
                    return true;
                }
            }
        }
        false
    }

    /// The reason RBAC allows the request, or None.
    pub fn allows(&self, a: &Attributes) -> Option<String> {
        let mut reason = None;
        self.visit(&a.user, &a.namespace, |src, rule| {
            if rule.allows(a) {
                reason = Some(format!("RBAC: allowed by {}", src.describe()));
                return true;
            }
            false
        });
        reason
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        let mut out: Vec<Rule> = Vec::new();
        self.visit(user, namespace, |_, r| {
            if !out.contains(r) {
                out.push(r.clone());
            }
            false
        });
        out
    }

    /// The rules of a role a binding in `namespace` (None: a ClusterRoleBinding) refers to.
    pub fn referenced_rules(
        &self,
        cluster_role: bool,
        name: &str,
        namespace: Option<&str>,
    ) -> Option<Vec<Rule>> {
        let b = Binding {
            name: String::new(),
            subjects: Vec::new(),
            cluster_role,
            role: name.into(),
        };
        self.role_rules(&b, namespace).map(|r| r.as_ref().clone())
    }
}

/// The parts of `wanted` that `held` does not cover, as upstream's escalation check reports
/// them: broken down to one verb, group, resource and name (or URL), then the verbs of the
/// same group/resource/name merged again, sorted as upstream sorts them (by verbs first).
pub fn uncovered(held: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    let mut missing: Vec<Rule> = Vec::new();
    for w in wanted {
        for atom in atoms(w) {
            if held.iter().any(|h| covers(h, &atom)) {
                continue;
            }
            let same_target = missing.iter().position(|m| {
                m.urls.is_empty()
                    && atom.urls.is_empty()
                    && (
                        m.groups.as_slice(),
                        m.resources.as_slice(),
                        m.names.as_slice(),
                    ) == (
                        atom.groups.as_slice(),
                        atom.resources.as_slice(),
                        atom.names.as_slice(),
                    )
            });
            match same_target {
                Some(i) if !missing[i].verbs.contains(&atom.verbs[0]) => {
                    missing[i].verbs.push(atom.verbs[0].clone())
                }
                Some(_) => {}
                None if !missing.contains(&atom) => missing.push(atom),
                None => {}
            }
        }
    }
    missing.sort_by_key(|r| {
        (
            r.verbs.join(" "),
            r.groups.clone(),
            r.resources.clone(),
            r.names.clone(),
            r.urls.clone(),
        )
    });
    missing
}

fn atoms(r: &Rule) -> Vec<Rule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for verb in &r.verbs {
        for url in &r.urls {
            out.push(Rule {
                verbs: one(verb),
                groups: vec![],
                resources: vec![],
                names: vec![],
                urls: one(url),
            });
        }
        for g in &r.groups {
            for res in &r.resources {
                let names: Vec<Vec<String>> = if r.names.is_empty() {
                    vec![vec![]]
                } else {
                    r.names.iter().map(one).collect()
                };
                for n in names {
                    out.push(Rule {
                        verbs: one(verb),
                        groups: one(g),
                        resources: one(res),
                        names: n,
                        urls: vec![],
                    });
                }
            }
        }
    }
    out
}

/// Whether `held` grants all of the single-valued rule `atom`.
fn covers(held: &Rule, atom: &Rule) -> bool {
    if !has_or_star(&held.verbs, &atom.verbs[0]) {
        return false;
    }
    if let Some(url) = atom.urls.first() {
        // `/api/*` covers `/api/v1` and `/api/v1/*`.
        return held.urls.iter().any(|h| url_matches(h, url));
    }
    let (group, resource) = (&atom.groups[0], &atom.resources[0]);
    has_or_star(&held.groups, group)
        && held.resources.iter().any(|h| {
            h == "*"
                || h == resource
                // `*/scale` covers `deployments/scale` (as the authorizer reads it).
                || h.strip_prefix("*/").is_some_and(|sub| {
                    resource.split_once('/').is_some_and(|(_, s)| s == sub)
                })
        })
        && (held.names.is_empty() || atom.names.first().is_some_and(|n| has(&held.names, n)))
}

/// Upstream's text for a rule in escalation errors: `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get"]}`.
pub fn describe_rule(r: &Rule) -> String {
    let q = |l: &[String]| {
        l.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !r.groups.is_empty() {
        parts.push(format!("APIGroups:[{}]", q(&r.groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:[{}]", q(&r.resources)));
    }
    if !r.urls.is_empty() {
        parts.push(format!("NonResourceURLs:[{}]", q(&r.urls)));
    }
    if !r.names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", q(&r.names)));
    }
    parts.push(format!("Verbs:[{}]", q(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> Arc<UserInfo> {
        Arc::new(UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        })
    }

    fn attrs(u: &Arc<UserInfo>, verb: &str, ns: &str, group: &str, res: &str) -> Attributes {
        Attributes {
            user: u.clone(),
            verb: verb.into(),
            namespace: ns.into(),
            group: group.into(),
            resource: res.into(),
            resource_request: true,
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.add_cluster_role(&json!({"metadata": {"name": "view"}, "rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get"]}]}));
        p.add_cluster_role(&json!({"metadata": {"name": "one-secret"}, "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"], "verbs": ["get"]}]}));
        p.add_cluster_role(&json!({"metadata": {"name": "health"}, "rules": [
            {"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]}]}));
        p.add_role(
            &json!({"metadata": {"name": "cm", "namespace": "a"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]}),
        );
        p.add_binding(&json!({"metadata": {"name": "b1", "namespace": "a"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot"}]}));
        p.add_binding(&json!({"metadata": {"name": "b2", "namespace": "a"},
            "roleRef": {"kind": "Role", "name": "cm"},
            "subjects": [{"kind": "Group", "name": "devs"}]}));
        p.add_cluster_binding(&json!({"metadata": {"name": "c1"},
            "roleRef": {"kind": "ClusterRole", "name": "one-secret"},
            "subjects": [{"kind": "User", "name": "alice"}]}));
        p.add_cluster_binding(&json!({"metadata": {"name": "c2"},
            "roleRef": {"kind": "ClusterRole", "name": "health"},
            "subjects": [{"kind": "Group", "name": "system:authenticated"}]}));
        p
    }

    #[test]
    fn bindings_grant_their_roles_rules_to_their_subjects_only() {
        let p = policy();
        let robot = user("system:serviceaccount:a:robot", &["system:serviceaccounts"]);
        let other_ns_robot = user("system:serviceaccount:b:robot", &[]);
        let dev = user("bob", &["devs"]);
        let alice = user("alice", &["system:authenticated"]);
        assert!(p.allows(&attrs(&robot, "list", "a", "", "pods")).is_some());
        assert!(p.allows(&attrs(&robot, "list", "b", "", "pods")).is_none());
        assert!(
            p.allows(&attrs(&robot, "create", "a", "", "pods"))
                .is_none()
        );
        assert!(
            p.allows(&attrs(&other_ns_robot, "list", "a", "", "pods"))
                .is_none()
        );
        assert!(
            p.allows(&attrs(&dev, "delete", "a", "", "configmaps"))
                .is_some()
        );
        assert!(
            p.allows(&attrs(&dev, "delete", "b", "", "configmaps"))
                .is_none()
        );
        // Subresources must be named; `*/scale` names every resource's scale.
        let mut log = attrs(&robot, "get", "a", "", "pods");
        log.subresource = "log".into();
        assert!(p.allows(&log).is_some());
        log.subresource = "exec".into();
        assert!(p.allows(&log).is_none());
        let mut scale = attrs(&robot, "get", "a", "apps", "deployments");
        scale.subresource = "scale".into();
        assert!(p.allows(&scale).is_some());
        // resourceNames limit the rule to those names (a list has no name).
        let mut get = attrs(&alice, "get", "x", "", "secrets");
        get.name = "s1".into();
        assert!(p.allows(&get).is_some());
        get.name = "s2".into();
        assert!(p.allows(&get).is_none());
        assert!(
            p.allows(&attrs(&alice, "get", "x", "", "secrets"))
                .is_none()
        );
        let reason = p.allows(&attrs(&robot, "get", "a", "", "pods")).unwrap();
        assert_eq!(
            reason,
            "RBAC: allowed by RoleBinding \"b1/a\" of ClusterRole \"view\" to ServiceAccount \"robot/a\""
        );
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let p = policy();
        let alice = user("alice", &["system:authenticated"]);
        let path = |p: &str| Attributes {
            user: alice.clone(),
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(p.allows(&path("/healthz")).is_some());
        assert!(p.allows(&path("/healthz/etcd")).is_none());
        assert!(p.allows(&path("/apis/apps")).is_some());
        assert!(p.allows(&path("/api")).is_none());
    }

    #[test]
    fn escalation_check_finds_what_is_not_held() {
        let r = |v: Value| Rule::from_json(&v);
        let held = vec![
            r(
                json!({"apiGroups": [""], "resources": ["pods", "pods/log", "pods/*"], "verbs": ["get", "list"]}),
            ),
            r(json!({"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["*"]})),
            r(
                json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"], "verbs": ["get"]}),
            ),
            r(json!({"nonResourceURLs": ["/api/*"], "verbs": ["get"]})),
        ];
        let wanted = vec![
            r(json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]})),
            r(
                json!({"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]}),
            ),
            r(
                json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"], "verbs": ["get"]}),
            ),
            r(json!({"nonResourceURLs": ["/api/v1"], "verbs": ["get"]})),
        ];
        assert!(uncovered(&held, &wanted).is_empty());
        let too_much = vec![
            r(
                json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete", "patch"]}),
            ),
            // `pods/*` names no subresource, for the authorizer and so here.
            r(json!({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]})),
            r(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})),
            r(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})),
        ];
        let missing: Vec<String> = uncovered(&held, &too_much)
            .iter()
            .map(describe_rule)
            .collect();
        assert_eq!(
            missing,
            vec![
                r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#,
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete" "patch"]}"#,
                r#"{APIGroups:[""], Resources:["pods/exec"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
            ]
        );
    }
}
