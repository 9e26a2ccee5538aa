//! CertificateSigningRequests, after upstream's registry strategy and validation: the requester
//! recorded from the request's user, status cleared on create and spec fixed after it, the
//! request a PEM CSR whose signature verifies, signer names, usages, durations and conditions
//! checked, the CertificateSubjectRestriction admission plugin, condition timestamps, the
//! `spec.signerName` field selector and `kubectl get csr` columns. What depends on the update's
//! subresource (who may approve or sign, status updates keeping approvals) is in
//! `admission/certificates.rs`.

use base64::Engine;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::KindBehaviour;
use crate::Api;
use crate::auth::UserInfo;
use crate::object::{check_dns_label, check_dns_subdomain, now_time};
use crate::registry::Resource;
use crate::status::{ApiError, ApiResult, Cause};
use crate::table::{AGE, Columns, N, age, arr, human_duration, name, s};

pub struct CertificateSigningRequests;

const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";
const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// Upstream's `KeyUsage` values.
const USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// Condition types whose status may only be "True".
const TRUE_ONLY: &[&str] = &["Approved", "Denied", "Failed"];

impl KindBehaviour for CertificateSigningRequests {
    fn name_check(&self) -> Option<super::NameCheck> {
        // "We don't care what you call your certificate requests."
        Some(super::any_name)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.signerName"]
    }

    /// Users cannot create pre-approved (or pre-issued) requests.
    fn prepare_for_create(&self, _res: &Resource, obj: &mut Value) {
        obj["status"] = json!({});
    }

    /// The requester is whoever creates the request, whatever the body says.
    fn set_requester(&self, obj: &mut Value, user: &UserInfo) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        for k in ["username", "uid", "groups", "extra"] {
            spec.remove(k);
        }
        spec.insert("username".into(), json!(user.name));
        if !user.uid.is_empty() {
            spec.insert("uid".into(), json!(user.uid));
        }
        spec.insert("groups".into(), json!(user.groups));
        if !user.extra.is_empty() {
            spec.insert("extra".into(), json!(user.extra));
        }
    }

    fn admit<'a>(
        &'a self,
        _api: &'a Api,
        _res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            match old {
                // Requests are immutable once made: every update path keeps the spec.
                Some(old) => obj["spec"] = old.get("spec").cloned().unwrap_or(json!({})),
                None => subject_restriction(obj)?,
            }
            populate_condition_times(obj, old);
            Ok(())
        })
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_request(obj, old, out);
        validate_conditions(obj, old, out);
        validate_certificate(obj, old, out);
        if let Some(old) = old {
            validate_update(obj, old, out);
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                AGE,
                ("SignerName", "string", 0),
                ("Requestor", "string", 0),
                ("RequestedDuration", "string", 0),
                ("Condition", "string", 0),
            ],
            |v| {
                let signer = match s(v, "/spec/signerName") {
                    "" => "<none>",
                    other => other,
                };
                let duration = match v.pointer("/spec/expirationSeconds").and_then(Value::as_i64) {
                    Some(secs) => human_duration(secs),
                    None => "<none>".into(),
                };
                vec![
                    name(v),
                    age(v),
                    json!(signer),
                    json!(s(v, "/spec/username")),
                    json!(duration),
                    json!(condition_summary(v)),
                ]
            },
        );
        Some(columns)
    }
}

/// `kubectl get csr`'s Condition: Denied, else Approved, else Pending; then Failed and Issued.
fn condition_summary(csr: &Value) -> String {
    let has = |t: &str| {
        arr(csr, "/status/conditions")
            .iter()
            .any(|c| s(c, "/type") == t)
    };
    let mut out = String::from(if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    });
    if has("Failed") {
        out.push_str(",Failed");
    }
    if !s(csr, "/status/certificate").is_empty() {
        out.push_str(",Issued");
    }
    out
}

/// The bytes of a `[]byte` field (base64 in JSON); empty when absent or not base64.
fn bytes_at(obj: &Value, ptr: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s(obj, ptr))
        .unwrap_or_default()
}

/// Upstream's CertificateSubjectRestriction admission plugin: no `system:masters` client
/// certificates through the kube-apiserver-client signer. Unparseable requests are left to
/// validation.
fn subject_restriction(obj: &Value) -> ApiResult<()> {
    if s(obj, "/spec/signerName") != KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    let Ok(req) = kinglet_pki::csr::parse(&bytes_at(obj, "/spec/request")) else {
        return Ok(());
    };
    if req.organizations().contains(&"system:masters") {
        return Err(ApiError::forbidden(format!(
            "certificatesigningrequests.certificates.k8s.io \"{}\" is forbidden: use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed",
            s(obj, "/metadata/name")
        )));
    }
    Ok(())
}

/// Upstream's `populateConditionTimestamps`: conditions without times get now, and keep the
/// transition time of an old condition of the same type and status.
fn populate_condition_times(obj: &mut Value, old: Option<&Value>) {
    let now = now_time();
    let old_conditions = old
        .map(|o| arr(o, "/status/conditions").to_vec())
        .unwrap_or_default();
    let Some(conditions) = obj
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for c in conditions.iter_mut().filter(|c| c.is_object()) {
        if s(c, "/lastUpdateTime").is_empty() {
            c["lastUpdateTime"] = json!(now);
        }
        if s(c, "/lastTransitionTime").is_empty() {
            let kept = old_conditions.iter().find(|o| {
                s(o, "/type") == s(c, "/type")
                    && s(o, "/status") == s(c, "/status")
                    && !s(o, "/lastTransitionTime").is_empty()
            });
            c["lastTransitionTime"] = match kept {
                Some(o) => json!(s(o, "/lastTransitionTime")),
                None => json!(now),
            };
        }
    }
}

fn strings(v: &Value, ptr: &str) -> Vec<String> {
    arr(v, ptr)
        .iter()
        .map(|u| u.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The spec: request, usages, signer name and duration. What an old object already has wrong
/// is tolerated on update, as upstream does.
fn validate_request(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    if let Err(e) = kinglet_pki::csr::parse(&bytes_at(obj, "/spec/request")) {
        out.push(Cause::invalid(
            "spec.request",
            obj.pointer("/spec/request").unwrap_or(&Value::Null),
            e,
        ));
    }
    let usages = strings(obj, "/spec/usages");
    let old_usages = old.map(|o| strings(o, "/spec/usages")).unwrap_or_default();
    if usages.is_empty() {
        out.push(Cause::required("spec.usages"));
    }
    let allow_unknown = old_usages.iter().any(|u| !USAGES.contains(&u.as_str()));
    let allow_duplicates = (1..old_usages.len()).any(|i| old_usages[..i].contains(&old_usages[i]));
    for (i, u) in usages.iter().enumerate() {
        if !allow_unknown && !USAGES.contains(&u.as_str()) {
            out.push(Cause::unsupported(
                format!("spec.usages[{i}]"),
                &json!(u),
                USAGES,
            ));
        }
        if !allow_duplicates && usages[..i].contains(u) {
            out.push(Cause::duplicate(format!("spec.usages[{i}]"), &json!(u)));
        }
    }
    let signer = s(obj, "/spec/signerName");
    let legacy_before = old.is_some_and(|o| s(o, "/spec/signerName") == LEGACY_UNKNOWN);
    if signer == LEGACY_UNKNOWN && !legacy_before {
        out.push(Cause::invalid(
            "spec.signerName",
            &json!(signer),
            "the legacy signerName is not allowed via this API version",
        ));
    } else {
        validate_signer_name(signer, out);
    }
    if let Some(secs) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        && secs < 600
    {
        out.push(Cause::invalid(
            "spec.expirationSeconds",
            &json!(secs),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
}

/// Upstream's `ValidateSignerName`: `<domain with a dot>/<path>`, the path a DNS subdomain.
fn validate_signer_name(signer: &str, out: &mut Vec<Cause>) {
    const FIELD: &str = "spec.signerName";
    if signer.is_empty() {
        out.push(Cause::required(FIELD));
        return;
    }
    let Some((domain, path)) = signer.split_once('/').filter(|(_, p)| !p.contains('/')) else {
        out.push(Cause::invalid(
            FIELD,
            &json!(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
        return;
    };
    if domain.len() > 253 {
        out.push(Cause::new(
            "FieldValueTooLong",
            FIELD,
            "Too long: may not be more than 253 bytes",
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if let Some((label, e)) = labels
        .iter()
        .find_map(|l| check_dns_label(l).map(|e| (l, e)))
    {
        out.push(Cause::invalid(
            FIELD,
            &json!(domain),
            format!("validating label \"{label}\": {e}"),
        ));
    }
    if labels.len() < 2 {
        out.push(Cause::invalid(
            FIELD,
            &json!(domain),
            "should be a domain with at least two segments separated by dots",
        ));
    }
    if path.len() > 253 + 63 + 1 {
        out.push(Cause::new(
            "FieldValueTooLong",
            FIELD,
            "Too long: may not be more than 317 bytes",
        ));
    }
    if let Some(e) = check_dns_subdomain(path) {
        out.push(Cause::invalid(FIELD, &json!(path), e));
    }
}

/// Condition types and statuses; Approved and Denied exclude each other.
fn validate_conditions(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let types = |v: &Value| -> Vec<String> {
        arr(v, "/status/conditions")
            .iter()
            .map(|c| s(c, "/type").to_string())
            .collect()
    };
    let old_types = old.map(types).unwrap_or_default();
    let allow_both =
        old_types.iter().any(|t| t == "Approved") && old_types.iter().any(|t| t == "Denied");
    let allow_duplicates = (1..old_types.len()).any(|i| old_types[..i].contains(&old_types[i]));
    let allow_empty = old_types.iter().any(String::is_empty);
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in arr(obj, "/status/conditions").iter().enumerate() {
        let path = format!("status.conditions[{i}]");
        let t = s(c, "/type");
        if t.is_empty() && !allow_empty {
            out.push(Cause::required(format!("{path}.type")));
        }
        let allowed: &[&str] = if TRUE_ONLY.contains(&t) {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        match s(c, "/status") {
            "" => out.push(Cause::required(format!("{path}.status"))),
            st if !allowed.contains(&st) => out.push(Cause::unsupported(
                format!("{path}.status"),
                &json!(st),
                allowed,
            )),
            _ => {}
        }
        if !allow_both {
            match t {
                "Approved" => approved = true,
                "Denied" => denied = true,
                _ => {}
            }
            if (t == "Approved" && denied) || (t == "Denied" && approved) {
                out.push(Cause::invalid(
                    format!("{path}.type"),
                    &json!(t),
                    "Approved and Denied conditions are mutually exclusive",
                ));
            }
        }
        if !allow_duplicates && seen.contains(&t) {
            out.push(Cause::duplicate(format!("{path}.type"), &json!(t)));
        }
        seen.push(t);
    }
}

/// `status.certificate`, when set or changed, must be a chain of PEM certificates.
fn validate_certificate(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let cert = s(obj, "/status/certificate");
    if cert.is_empty() {
        return;
    }
    if let Some(old) = old {
        let before = s(old, "/status/certificate");
        if before == cert
            || kinglet_pki::csr::check_certificates(&bytes_at(old, "/status/certificate")).is_err()
                && !before.is_empty()
        {
            return;
        }
    }
    if let Err(e) = kinglet_pki::csr::check_certificates(&bytes_at(obj, "/status/certificate")) {
        out.push(Cause::invalid(
            "status.certificate",
            &json!("<certificate data>"),
            e,
        ));
    }
}

/// What no update may do: remove an Approved, Denied or Failed condition, or replace an issued
/// certificate.
fn validate_update(obj: &Value, old: &Value, out: &mut Vec<Cause>) {
    let count = |v: &Value, t: &str| {
        arr(v, "/status/conditions")
            .iter()
            .filter(|c| s(c, "/type") == t)
            .count()
    };
    for t in TRUE_ONLY {
        if count(obj, t) < count(old, t) {
            out.push(Cause::forbidden(
                "status.conditions",
                format!("updates may not remove a condition of type \"{t}\""),
            ));
        }
    }
    let before = s(old, "/status/certificate");
    if !before.is_empty() && s(obj, "/status/certificate") != before {
        out.push(Cause::forbidden(
            "status.certificate",
            "updates may not modify existing certificate content",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_column_reads_as_upstreams() {
        let csr = |conds: &[&str], cert: &str| {
            let c: Vec<Value> = conds
                .iter()
                .map(|t| json!({"type": t, "status": "True"}))
                .collect();
            json!({"status": {"conditions": c, "certificate": cert}})
        };
        for (conds, cert, want) in [
            (&[][..], "", "Pending"),
            (&["Approved"][..], "", "Approved"),
            (&["Approved"][..], "Y2VydA==", "Approved,Issued"),
            (&["Approved", "Failed"][..], "", "Approved,Failed"),
            (&["Denied"][..], "", "Denied"),
        ] {
            assert_eq!(condition_summary(&csr(conds, cert)), want, "{conds:?}");
        }
    }

    #[test]
    fn signer_names_must_be_domain_and_path() {
        let check = |name: &str| {
            let mut out = Vec::new();
            validate_signer_name(name, &mut out);
            out.iter()
                .map(Cause::describe)
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert_eq!(check("kubernetes.io/kube-apiserver-client"), "");
        assert_eq!(check("example.com/a.b"), "");
        assert_eq!(check(""), "spec.signerName: Required value");
        assert!(check("example.com").contains("must be a fully qualified domain and path"));
        assert!(check("a/b/c").contains("must be a fully qualified domain and path"));
        assert!(check("example/signer").contains("at least two segments separated by dots"));
        assert!(check("Example.com/signer").contains("validating label \"Example\""));
        assert!(check("example.com/Signer").contains("RFC 1123 subdomain"));
    }

    #[test]
    fn condition_times_are_filled_and_transitions_kept() {
        let old = json!({"status": {"conditions": [
            {"type": "Approved", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}
        ]}});
        let mut new = json!({"status": {"conditions": [
            {"type": "Approved", "status": "True"},
            {"type": "Failed", "status": "True"}
        ]}});
        populate_condition_times(&mut new, Some(&old));
        assert_eq!(
            s(&new, "/status/conditions/0/lastTransitionTime"),
            "2020-01-01T00:00:00Z"
        );
        assert!(!s(&new, "/status/conditions/0/lastUpdateTime").is_empty());
        assert!(!s(&new, "/status/conditions/1/lastTransitionTime").is_empty());
    }
}
