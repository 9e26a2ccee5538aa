//! Non-CRUD endpoints: reviews (TokenReview, SelfSubjectReview, access reviews), pod binding,
//! TokenRequest and eviction.

use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::Api;
use super::auth::{Claims, K8sClaims, Ref, UserInfo};
use super::context::Ctx;
use super::handlers::json_response;
use super::lifecycle::{DeleteOptions, commit_update, delete_object, get_current};
use super::object::{self, meta_str};
use super::registry::Resource;
use super::selectors::LabelSelector;
use super::status::{ApiError, ApiResult, Cause, success_status};

pub async fn create_review(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    body: &Bytes,
) -> ApiResult<Response> {
    let mut obj = ctx.decode_body(body)?;
    if res.plural == "bindings" {
        let name = object::name(&obj).to_string();
        return bind_pod(api, ctx, &name, &obj).await;
    }
    super::lifecycle::check_type_meta(res, &mut obj)?;
    let status = match res.kind.as_str() {
        "TokenReview" => {
            let token = obj
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("");
            let want = audiences(api, &obj);
            match api.authenticate_token(token, &want).await {
                Some((user, claims)) => {
                    let matched: Vec<&String> =
                        want.iter().filter(|a| claims.aud.contains(a)).collect();
                    json!({"authenticated": true, "user": user.to_json(), "audiences": matched})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        }
        "SelfSubjectReview" => json!({"userInfo": ctx.user.to_json()}),
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            access_review(api, res, ctx, &obj).await?
        }
        "SelfSubjectRulesReview" => {
            let ns = obj
                .pointer("/spec/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let (urls, resources): (Vec<_>, Vec<_>) = api
                .authz
                .rules_for(&ctx.user, ns)
                .into_iter()
                .partition(|r| !r.urls.is_empty());
            json!({
                "resourceRules": resources.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "nonResourceRules": urls.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "incomplete": false,
            })
        }
        other => {
            return Err(ApiError::method_not_allowed(format!(
                "create is not supported for {other}"
            )));
        }
    };
    obj["status"] = status;
    obj["metadata"] = json!({"creationTimestamp": null});
    Ok(json_response(ctx, 201, &obj))
}

/// The status of a (Self|Local)SubjectAccessReview: whether the subject may do what it names.
async fn access_review(api: &Api, res: &Resource, ctx: &Ctx, obj: &Value) -> ApiResult<Value> {
    let spec = &obj["spec"];
    let invalid = |field: &str, msg: &str| {
        ApiError::invalid(
            &res.group,
            &res.kind,
            "",
            vec![Cause::new("FieldValueInvalid", field, msg)],
        )
    };
    let user = if res.kind == "SelfSubjectAccessReview" {
        ctx.user.clone()
    } else {
        let strings = |p: &str| -> Vec<String> {
            spec.pointer(p)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let name = spec.get("user").and_then(Value::as_str).unwrap_or("");
        let groups = strings("/groups");
        if name.is_empty() && groups.is_empty() {
            return Err(invalid(
                "spec.user",
                "Invalid value: \"\": at least one of user or group must be specified",
            ));
        }
        let extra = spec
            .get("extra")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, _)| (k.clone(), strings(&format!("/extra/{k}"))))
            .collect();
        std::sync::Arc::new(UserInfo {
            name: name.into(),
            uid: spec.get("uid").and_then(Value::as_str).unwrap_or("").into(),
            groups,
            extra,
        })
    };
    let field = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let attrs = match (
        spec.get("resourceAttributes").filter(|v| !v.is_null()),
        spec.get("nonResourceAttributes").filter(|v| !v.is_null()),
    ) {
        (Some(r), None) => {
            let a = super::authz::Attributes {
                user,
                verb: field(r, "verb"),
                resource_request: true,
                namespace: field(r, "namespace"),
                group: field(r, "group"),
                resource: field(r, "resource"),
                subresource: field(r, "subresource"),
                name: field(r, "name"),
                path: String::new(),
            };
            if res.kind == "LocalSubjectAccessReview"
                && Some(a.namespace.as_str()) != ctx.path.namespace.as_deref()
            {
                return Err(invalid(
                    "spec.resourceAttributes.namespace",
                    "Invalid value: must match metadata.namespace",
                ));
            }
            a
        }
        (None, Some(n)) => super::authz::Attributes {
            user,
            verb: field(n, "verb"),
            path: field(n, "path"),
            ..Default::default()
        },
        _ => {
            return Err(invalid(
                "spec.resourceAttributes",
                "Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    Ok(match api.authz.authorize(api, &attrs).await {
        super::authz::Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        super::authz::Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        super::authz::Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    })
}

pub async fn bind(
    api: &Api,
    _res: &Resource,
    ctx: &Ctx,
    name: &str,
    body: &Bytes,
) -> ApiResult<Response> {
    let binding = ctx.decode_body(body)?;
    bind_pod(api, ctx, name, &binding).await
}

/// Sets a pod's node, once, as the scheduler's Binding does.
async fn bind_pod(api: &Api, ctx: &Ctx, name: &str, binding: &Value) -> ApiResult<Response> {
    let pods = api
        .registry
        .find("", "v1", "pods")
        .ok_or_else(ApiError::path_not_found)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            vec![Cause::required("target.name")],
        ));
    }
    for _ in 0..5 {
        let (rec, pod) = get_current(api, &pods, ctx, name).await?;
        if let Some(uid) = binding.pointer("/metadata/uid").and_then(Value::as_str)
            && meta_str(&pod, "uid") != Some(uid)
        {
            return Err(ApiError::conflict_msg(
                "",
                "pods",
                name,
                "Precondition failed: UID in precondition does not match",
            ));
        }
        let current = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !current.is_empty() {
            return Err(ApiError::conflict_msg(
                "",
                "pods",
                name,
                &format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        if object::is_deleting(&pod) {
            return Err(ApiError::conflict_msg(
                "",
                "pods",
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let mut new = pod.clone();
        new["spec"]["nodeName"] = json!(node);
        let conds = new["status"]
            .as_object_mut()
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(c)) = conds {
            c.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            c.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now_time()}));
        }
        match commit_update(api, &pods, ctx, rec.rev, &pod, new, Some("binding")).await {
            Ok(_) => return Ok(json_response(ctx, 201, &success_status(json!({})))),
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict("", "pods", name))
}

/// TokenRequest: a signed, bound service-account token.
pub async fn token_request(
    api: &Api,
    ctx: &Ctx,
    sa_name: &str,
    body: &Bytes,
) -> ApiResult<Response> {
    let sas = api
        .registry
        .find("", "v1", "serviceaccounts")
        .ok_or_else(ApiError::path_not_found)?;
    let (_, sa) = get_current(api, &sas, ctx, sa_name).await?;
    let mut req = ctx.decode_body(body)?;
    let ns = ctx.path.namespace.clone().unwrap_or_default();
    let exp_secs = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if exp_secs < 600 {
        return Err(ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            sa_name,
            vec![Cause::invalid(
                "spec.expirationSeconds",
                &json!(exp_secs),
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    let exp_secs = exp_secs.min(48 * 3600);
    let auds = audiences(api, &req);
    let mut k8s = K8sClaims {
        namespace: ns.clone(),
        serviceaccount: Ref {
            name: sa_name.into(),
            uid: meta_str(&sa, "uid").unwrap_or_default().into(),
        },
        ..Default::default()
    };
    let bound_ref = req
        .pointer("/spec/boundObjectRef")
        .filter(|b| b.is_object());
    // NodeRestriction: a node's tokens are bound to a pod of its own, by uid.
    if super::authz::node::node_of(&ctx.user).is_some() {
        let kind = bound_ref
            .and_then(|b| b.get("kind"))
            .and_then(Value::as_str);
        let uid = bound_ref.and_then(|b| b.get("uid")).and_then(Value::as_str);
        let problem = match (kind, uid) {
            (Some("Pod"), Some(u)) if !u.is_empty() => None,
            (Some("Pod"), _) => Some("node requested token bound to a pod without a uid"),
            _ => Some("node requested token not bound to a pod"),
        };
        if let Some(p) = problem {
            return Err(ApiError::forbidden(format!(
                "serviceaccounts \"{sa_name}\" is forbidden: {p}"
            )));
        }
    }
    if let Some(bound) = bound_ref {
        let kind = bound.get("kind").and_then(Value::as_str).unwrap_or("");
        let bname = bound
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (plural, label) = match kind {
            "Pod" => ("pods", "pod"),
            "Secret" => ("secrets", "secret"),
            "Node" => ("nodes", "node"),
            other => {
                return Err(ApiError::invalid(
                    "authentication.k8s.io",
                    "TokenRequest",
                    sa_name,
                    vec![Cause::unsupported(
                        "spec.boundObjectRef.kind",
                        &json!(other),
                        &["Pod", "Secret", "Node"],
                    )],
                ));
            }
        };
        let res = api
            .registry
            .find("", "v1", plural)
            .ok_or_else(ApiError::path_not_found)?;
        let (_, obj) = get_current(api, &res, ctx, &bname).await?;
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        if let Some(want) = bound
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::conflict_msg(
                "",
                plural,
                &bname,
                &format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        let r = Ref { name: bname, uid };
        match label {
            "pod" => {
                let pod_sa = obj
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if pod_sa != sa_name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount \"{sa_name}\" to pod running with different serviceaccount name."
                    )));
                }
                if let Some(node) = super::authz::node::node_of(&ctx.user)
                    && obj.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node)
                {
                    return Err(ApiError::forbidden(format!(
                        "serviceaccounts \"{sa_name}\" is forbidden: node requested token bound to a pod scheduled on a different node"
                    )));
                }
                if let Some(node) = obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                {
                    k8s.node = Some(Ref {
                        name: node.into(),
                        uid: String::new(),
                    });
                }
                k8s.pod = Some(r);
            }
            "secret" => k8s.secret = Some(r),
            _ => k8s.node = Some(r),
        }
    }
    let now = chrono::Utc::now();
    let exp = now + chrono::Duration::seconds(exp_secs);
    let claims = Claims {
        iss: api.auth.signer.issuer.clone(),
        aud: auds.clone(),
        sub: format!("system:serviceaccount:{ns}:{sa_name}"),
        exp: exp.timestamp(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: uuid::Uuid::new_v4().to_string(),
        k8s,
    };
    let token = api
        .auth
        .signer
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({"name": sa_name, "namespace": ns, "creationTimestamp": null});
    req["spec"]["audiences"] = json!(auds);
    req["spec"]["expirationSeconds"] = json!(exp_secs);
    req["status"] = json!({"token": token, "expirationTimestamp": exp.format("%Y-%m-%dT%H:%M:%SZ").to_string()});
    Ok(json_response(ctx, 201, &req))
}

/// Eviction: delete the pod unless a PodDisruptionBudget forbids it.
pub async fn evict(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    body: &Bytes,
) -> ApiResult<Response> {
    let eviction = ctx.decode_body(body)?;
    let (_, pod) = get_current(api, res, ctx, name).await?;
    let ns = ctx.path.namespace.clone().unwrap_or_default();
    let pdbs = api
        .registry
        .find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(ApiError::path_not_found)?;
    let page = api
        .store
        .list(&pdbs.ns_prefix(Some(&ns)), 0, None, None)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let terminal = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    for rec in page.items {
        let pdb: Value = serde_json::from_slice(&rec.value).unwrap_or_default();
        let sel = pdb
            .pointer("/spec/selector")
            .map(LabelSelector::from_object)
            .transpose()
            .unwrap_or(None);
        if terminal || !sel.is_some_and(|s| !s.is_empty() && s.matches_object(&pod)) {
            continue;
        }
        if pdb
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            < 1
        {
            let mut e = ApiError::new(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
            e.details = Some(
                json!({"causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {} needs {} healthy pods and has {} currently", object::name(&pdb), pdb.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0), pdb.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0))}]}),
            );
            return Err(e);
        }
    }
    let opts = DeleteOptions {
        grace: eviction
            .pointer("/deleteOptions/gracePeriodSeconds")
            .and_then(Value::as_i64),
        uid: eviction
            .pointer("/deleteOptions/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        rv: eviction
            .pointer("/deleteOptions/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        propagation: None,
    };
    delete_object(api, res, ctx, name, &opts).await?;
    Ok(json_response(ctx, 201, &success_status(json!({}))))
}

/// The audiences a request names, or the API's own.
fn audiences(api: &Api, obj: &Value) -> Vec<String> {
    let auds = object::str_list(obj, "/spec/audiences");
    if auds.is_empty() {
        api.auth.api_audiences.clone()
    } else {
        auds
    }
}

impl Api {
    /// Verifies a bearer token and that the objects it is bound to still exist.
    pub async fn authenticate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Option<(UserInfo, Claims)> {
        let claims = self.auth.signer.verify(token, audiences)?;
        let check = |plural: &str, ns: Option<&str>, r: &Ref| {
            let key = self
                .registry
                .find("", "v1", plural)
                .map(|res| res.key(ns, &r.name));
            let uid = r.uid.clone();
            async move {
                let Some(key) = key else { return false };
                match self.store.get(&key).await {
                    Ok(Some(rec)) => {
                        uid.is_empty()
                            || serde_json::from_slice::<Value>(&rec.value)
                                .ok()
                                .and_then(|v| meta_str(&v, "uid").map(String::from))
                                == Some(uid)
                    }
                    _ => false,
                }
            }
        };
        let ns = claims.k8s.namespace.clone();
        if !check("serviceaccounts", Some(&ns), &claims.k8s.serviceaccount).await {
            return None;
        }
        if let Some(p) = &claims.k8s.pod
            && !check("pods", Some(&ns), p).await
        {
            return None;
        }
        if let Some(s) = &claims.k8s.secret
            && !check("secrets", Some(&ns), s).await
        {
            return None;
        }
        Some((super::auth::user_from_claims(&claims), claims))
    }
}
