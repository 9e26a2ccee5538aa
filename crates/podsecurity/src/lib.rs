//! Pod Security admission, as upstream's built-in `PodSecurity` plugin
//! (k8s.io/pod-security-admission) at Kubernetes 1.33: the `pod-security.kubernetes.io/enforce`,
//! `audit` and `warn` namespace labels (with their `-version` labels) select the privileged,
//! baseline or restricted Pod Security Standard; pods that violate the enforce level are refused,
//! and pods and workload templates that violate the warn level get warnings, with upstream's
//! messages.
//!
//! Pure logic on JSON objects; the API server calls [`admit_pod`], [`admit_pod_controller`] and
//! [`admit_namespace`] from its admission step. Exemptions (admission configuration file) are not
//! supported.

mod admission;
mod checks;
mod policy;
mod text;

pub use admission::{
    Decision, NamespaceDecision, admit_namespace, admit_pod, admit_pod_controller,
    existing_pods_warnings, forbidden_message, is_significant_pod_update, pod_template,
    warning_message,
};
pub use checks::{Violation, check_pod, forbidden_detail, forbidden_reasons};
pub use policy::{
    AUDIT_LABEL, AUDIT_VERSION_LABEL, ENFORCE_LABEL, ENFORCE_VERSION_LABEL, LABEL_PREFIX,
    LabelError, Level, LevelVersion, NamespacePolicy, Version, WARN_LABEL, WARN_VERSION_LABEL,
    aggregate_errors, policy_from_labels,
};
