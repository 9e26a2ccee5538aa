//! What CertificateSigningRequest updates may do depending on their subresource, as upstream:
//! the `status` strategy (its updates keep the old Approved and Denied conditions, so issuing
//! cannot approve), and the CertificateApproval and CertificateSigning admission plugins
//! (approving needs `approve`, issuing `sign`, on the synthetic `signers` resource named by
//! the request's signer or by `<domain>/*`).

use std::sync::Arc;

use serde_json::Value;

use super::super::Api;
use super::super::auth::UserInfo;
use super::super::authz::Attributes;
use super::super::context::Ctx;
use super::super::object;
use super::super::registry::Resource;
use super::super::status::{ApiError, ApiResult, Cause, qualified};
use super::super::table::{arr, s};

const GROUP: &str = "certificates.k8s.io";

/// Condition types only the `approval` subresource may add or change.
const APPROVAL_TYPES: &[&str] = &["Approved", "Denied"];

/// Runs on every admitted write; acts on updates of a CSR's `approval` and `status`.
pub async fn admit(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let Some(old) = old else {
        return Ok(());
    };
    if res.group != GROUP || res.plural != "certificatesigningrequests" {
        return Ok(());
    }
    let name = object::name(obj).to_string();
    // The stored signer, so that an update cannot pick the signer it is checked against.
    let signer = s(old, "/spec/signerName");
    let verb = match ctx.path.subresource.as_deref() {
        Some("approval") => "approve",
        Some("status") => {
            let causes = keep_approval(obj, old);
            if !causes.is_empty() {
                return Err(ApiError::invalid(&res.group, &res.kind, &name, causes));
            }
            // Only issuing (or failing) a request needs `sign`.
            if s(obj, "/status/certificate") == s(old, "/status/certificate")
                && arr(obj, "/status/conditions") == arr(old, "/status/conditions")
            {
                return Ok(());
            }
            "sign"
        }
        _ => return Ok(()),
    };
    if authorized_for_signer(api, &ctx.user, verb, signer).await {
        return Ok(());
    }
    Err(forbidden(
        res,
        &name,
        format!("user not permitted to {verb} requests with signerName {signer:?}"),
    ))
}

/// Upstream's status strategy and status-update validation: each Approved or Denied condition
/// of the update takes the old one's place when their number is unchanged; adding one is
/// refused (removing one is refused by the kind's validation, on every update path).
fn keep_approval(obj: &mut Value, old: &Value) -> Vec<Cause> {
    let old_conditions = arr(old, "/status/conditions");
    let Some(conditions) = obj
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return Vec::new();
    };
    let mut causes = Vec::new();
    for t in APPROVAL_TYPES {
        let before: Vec<&Value> = old_conditions
            .iter()
            .filter(|c| s(c, "/type") == *t)
            .collect();
        let now: Vec<usize> = (0..conditions.len())
            .filter(|&i| s(&conditions[i], "/type") == *t)
            .collect();
        if now.len() > before.len() {
            causes.push(Cause::forbidden(
                "status.conditions",
                format!("updates may not add a condition of type {t:?}"),
            ));
        } else if now.len() == before.len() {
            for (i, c) in now.into_iter().zip(before) {
                conditions[i] = c.clone();
            }
        }
    }
    causes
}

/// Upstream's `IsAuthorizedForSignerName`: `verb` on the signer itself, or on every signer of
/// its domain (`<domain>/*`).
async fn authorized_for_signer(api: &Api, user: &Arc<UserInfo>, verb: &str, signer: &str) -> bool {
    let on = |name: String| Attributes {
        user: user.clone(),
        verb: verb.into(),
        resource_request: true,
        group: GROUP.into(),
        resource: "signers".into(),
        name,
        ..Default::default()
    };
    if api.authz.allows(api, &on(signer.to_string())).await {
        return true;
    }
    let domain = signer.split('/').next().unwrap_or_default();
    api.authz.allows(api, &on(format!("{domain}/*"))).await
}

/// Upstream's admission Forbidden: `<resource> "<name>" is forbidden: <reason>`.
fn forbidden(res: &Resource, name: &str, msg: String) -> ApiError {
    let mut e = ApiError::forbidden(format!(
        "{} {name:?} is forbidden: {msg}",
        qualified(&res.group, &res.plural)
    ));
    e.details = Some(serde_json::json!({"name": name, "group": res.group, "kind": res.plural}));
    e
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn csr(conditions: Value) -> Value {
        json!({"status": {"conditions": conditions}})
    }

    #[test]
    fn status_updates_keep_approval_conditions_and_cannot_add_them() {
        let old = csr(json!([{"type": "Approved", "status": "True", "reason": "Admin"}]));
        // A changed Approved condition is put back; other conditions go through.
        let mut new = csr(json!([
            {"type": "Approved", "status": "True", "reason": "Forged"},
            {"type": "Failed", "status": "True", "reason": "Bad"}
        ]));
        assert!(keep_approval(&mut new, &old).is_empty());
        assert_eq!(s(&new, "/status/conditions/0/reason"), "Admin");
        assert_eq!(s(&new, "/status/conditions/1/reason"), "Bad");
        // Approving or denying through status is refused.
        let mut new = csr(json!([
            {"type": "Approved", "status": "True"},
            {"type": "Denied", "status": "True"}
        ]));
        let causes = keep_approval(&mut new, &csr(json!([])));
        let text: Vec<String> = causes.iter().map(Cause::describe).collect();
        assert_eq!(
            text,
            [
                "status.conditions: Forbidden: updates may not add a condition of type \"Approved\"",
                "status.conditions: Forbidden: updates may not add a condition of type \"Denied\""
            ]
        );
    }
}
