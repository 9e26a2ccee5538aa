//! Admission: decoding checks (types, unknown fields), defaulting, the kind's mutating plugins
//! (ServiceAccount, DefaultTolerationSeconds, Priority, Service allocation, Job selectors, in
//! their kinds' modules), NodeRestriction and RBAC escalation checks, mutating admission
//! webhooks, CertificateApproval and CertificateSigning, validation, Pod Security, and
//! validating admission webhooks (upstream's order: webhooks after the built-in plugins of
//! their phase).

mod certificates;
pub mod defaults;
mod pod_security;
pub mod schema;
pub mod validation;
pub mod webhook;

use serde_json::Value;

use super::Api;
use super::context::Ctx;
use super::kinds;
use super::object;
use super::registry::Resource;
use super::status::{ApiError, ApiResult};

/// Runs admission on `obj` (a create when `old` is None).
pub async fn admit(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    if let Some(custom) = &res.custom {
        super::crd::validate_custom(res, custom, ctx, obj)?;
    } else {
        schema::check_unknown_fields(res, ctx, obj)?;
        if let Some(check) = res.decode_check {
            check(obj).map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    res.kind, res.version, res.kind
                ))
            })?;
        }
        defaults::apply(res, obj);
    }
    if res.group == "admissionregistration.k8s.io"
        && matches!(
            res.plural.as_str(),
            "validatingadmissionpolicies" | "validatingadmissionpolicybindings"
        )
    {
        // Said on every write, so that no one counts on a policy that does nothing here.
        ctx.warn(format!(
            "{}: stored but not enforced by kinglet (no CEL evaluation of admission policies)",
            res.kind
        ));
    }
    super::authz::node::admit(res, ctx, obj, old)?;
    super::authz::escalation::admit(api, res, ctx, obj).await?;
    if old.is_none() {
        kinds::of(res).set_requester(obj, &ctx.user);
    }
    // What the kind's plugins reserved (a Service's addresses) is given back on any refusal,
    // theirs included (a Service given one address, then refused a port).
    let kind = kinds::of(res);
    let mut result = kind.admit(api, res, obj, old).await;
    if result.is_ok() {
        result = checks(api, res, ctx, obj, old).await;
    }
    if result.is_err() {
        match old {
            None => kind.create_failed(api, obj).await,
            Some(old) => kind.update_failed(api, old, obj).await,
        }
    }
    result
}

/// Admission after the kind's mutating plugins: webhooks, validation, Pod Security.
async fn checks(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let hooks = webhook::Attrs {
        res,
        ctx,
        operation: if old.is_some() { "UPDATE" } else { "CREATE" },
        old,
    };
    if let Some(before) = webhook::mutate(api, &hooks, Some(obj)).await? {
        // Upstream applies its strategies after all mutating admission: what the server owns,
        // and what a subresource may not change, is set again over what webhooks wrote; the
        // checks and the kind's plugins that ran before them run again on the result (what
        // those reserved for the object before the webhooks is given back first).
        match old {
            None => {
                kinds::of(res).create_failed(api, &before).await;
                super::lifecycle::create_strategy(res, ctx, obj)?;
            }
            Some(old) => {
                kinds::of(res).update_failed(api, old, &before).await;
                let sub = ctx.path.subresource.as_deref();
                *obj = super::lifecycle::update_strategy(res, old, obj.take(), sub)?;
            }
        }
        super::authz::node::admit(res, ctx, obj, old)?;
        super::authz::escalation::admit(api, res, ctx, obj).await?;
        if old.is_none() {
            kinds::of(res).set_requester(obj, &ctx.user);
        }
        kinds::of(res).admit(api, res, obj, old).await?;
    }
    certificates::admit(api, res, ctx, obj, old).await?;
    let causes = validation::validate(res, obj, old);
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            &res.group,
            &res.kind,
            object::name(obj),
            causes,
        ));
    }
    pod_security::admit(api, res, ctx, obj, old).await?;
    webhook::validate(api, &hooks, Some(obj)).await
}
