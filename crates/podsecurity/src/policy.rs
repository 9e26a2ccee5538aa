//! Levels, versions and the policy a namespace's `pod-security.kubernetes.io/*` labels select.

use std::fmt;

use serde_json::Value;

use crate::text::go_quote;

pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";

/// A Pod Security Standard, from the most to the least permissive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// Parses a level label value; the error is upstream's field error detail.
    pub fn parse(s: &str) -> Result<Level, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err("must be one of privileged, baseline, restricted".to_string()),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy version: `latest` or `v1.<minor>`. Versions newer than the checks we know are
/// evaluated with the newest checks, as upstream does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Latest,
    V1(u64),
}

impl Version {
    /// Parses a version label value; the error is upstream's field error detail.
    pub fn parse(s: &str) -> Result<Version, String> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let bad = || "must be \"latest\" or \"v1.x\"".to_string();
        let minor = s.strip_prefix("v1.").ok_or_else(bad)?;
        // Digits only and no leading zero (upstream: `^v1\.([0-9]|[1-9][0-9]*)$`).
        if minor.is_empty()
            || !minor.bytes().all(|b| b.is_ascii_digit())
            || (minor.len() > 1 && minor.starts_with('0'))
        {
            return Err(bad());
        }
        minor.parse().map(Version::V1).map_err(|_| bad())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::V1(minor) => write!(f, "v1.{minor}"),
        }
    }
}

/// A level at a version, shown as upstream shows it: `restricted:latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const PRIVILEGED_LATEST: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };

    pub fn new(level: Level, version: Version) -> LevelVersion {
        LevelVersion { level, version }
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// What a namespace's labels select for each mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Default for NamespacePolicy {
    /// Upstream's defaults without an admission configuration: privileged:latest everywhere.
    fn default() -> Self {
        NamespacePolicy {
            enforce: LevelVersion::PRIVILEGED_LATEST,
            audit: LevelVersion::PRIVILEGED_LATEST,
            warn: LevelVersion::PRIVILEGED_LATEST,
        }
    }
}

impl NamespacePolicy {
    pub fn fully_privileged(&self) -> bool {
        self.enforce.level == Level::Privileged
            && self.audit.level == Level::Privileged
            && self.warn.level == Level::Privileged
    }
}

/// An invalid `pod-security.kubernetes.io/*` label: upstream's `field.Invalid` error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub detail: String,
}

impl LabelError {
    /// The field path: `metadata.labels[pod-security.kubernetes.io/enforce]`.
    pub fn field(&self) -> String {
        format!("metadata.labels[{}]", self.label)
    }

    /// The cause message: `Invalid value: "foo": must be one of privileged, baseline, restricted`.
    pub fn message(&self) -> String {
        format!("Invalid value: {}: {}", go_quote(&self.value), self.detail)
    }
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field(), self.message())
    }
}

/// Upstream's aggregate error text: one message, or `[a, b]`.
pub fn aggregate_errors(errors: &[LabelError]) -> String {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    if list.len() == 1 {
        list.into_iter().next().unwrap_or_default()
    } else {
        format!("[{}]", list.join(", "))
    }
}

/// The policy selected by a namespace's labels (`metadata.labels`, an object or null), and the
/// errors of invalid labels. As upstream, an invalid enforce level enforces `restricted` (fail
/// closed), invalid audit/warn levels are `privileged` (fail open), an invalid version is
/// `latest`, and warn follows a stricter enforce level when warn is not set.
pub fn policy_from_labels(labels: &Value) -> (NamespacePolicy, Vec<LabelError>) {
    let mut policy = NamespacePolicy::default();
    let mut errors = Vec::new();
    let Some(labels) = labels.as_object() else {
        return (policy, errors);
    };
    let get = |label: &str| labels.get(label).map(|v| v.as_str().unwrap_or_default());
    let mut fail = |label: &str, value: &str, detail: String| {
        errors.push(LabelError {
            label: label.to_string(),
            value: value.to_string(),
            detail,
        })
    };

    let mut has_enforce_level = false;
    if let Some(v) = get(ENFORCE_LABEL) {
        match Level::parse(v) {
            Ok(level) => {
                policy.enforce.level = level;
                has_enforce_level = true;
            }
            Err(e) => {
                policy.enforce.level = Level::Restricted;
                fail(ENFORCE_LABEL, v, e);
            }
        }
    }
    if let Some(v) = get(ENFORCE_VERSION_LABEL) {
        policy.enforce.version = Version::parse(v).unwrap_or_else(|e| {
            fail(ENFORCE_VERSION_LABEL, v, e);
            Version::Latest
        });
    }
    if let Some(v) = get(AUDIT_LABEL) {
        policy.audit.level = Level::parse(v).unwrap_or_else(|e| {
            fail(AUDIT_LABEL, v, e);
            Level::Privileged
        });
    }
    if let Some(v) = get(AUDIT_VERSION_LABEL) {
        policy.audit.version = Version::parse(v).unwrap_or_else(|e| {
            fail(AUDIT_VERSION_LABEL, v, e);
            Version::Latest
        });
    }
    let has_warn_level = get(WARN_LABEL).is_some();
    if let Some(v) = get(WARN_LABEL) {
        policy.warn.level = Level::parse(v).unwrap_or_else(|e| {
            fail(WARN_LABEL, v, e);
            Level::Privileged
        });
    }
    let has_warn_version = get(WARN_VERSION_LABEL).is_some();
    if let Some(v) = get(WARN_VERSION_LABEL) {
        policy.warn.version = Version::parse(v).unwrap_or_else(|e| {
            fail(WARN_VERSION_LABEL, v, e);
            Version::Latest
        });
    }

    // Without a warn label, users are warned at least at the enforce level.
    if !has_warn_level && has_enforce_level && policy.enforce.level > policy.warn.level {
        policy.warn.level = policy.enforce.level;
        if !has_warn_version {
            policy.warn.version = policy.enforce.version;
        }
    }
    (policy, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lv(level: Level, version: Version) -> LevelVersion {
        LevelVersion::new(level, version)
    }

    #[test]
    fn parses_levels_and_versions() {
        assert_eq!(Level::parse("baseline"), Ok(Level::Baseline));
        assert_eq!(
            Level::parse("Restricted").unwrap_err(),
            "must be one of privileged, baseline, restricted"
        );
        assert_eq!(Version::parse("latest"), Ok(Version::Latest));
        assert_eq!(Version::parse("v1.0"), Ok(Version::V1(0)));
        assert_eq!(Version::parse("v1.33"), Ok(Version::V1(33)));
        for bad in [
            "", "v1", "v1.", "v1.05", "v2.1", "1.25", "v1.2x", "v1.-1", "LATEST",
        ] {
            assert_eq!(
                Version::parse(bad).unwrap_err(),
                "must be \"latest\" or \"v1.x\"",
                "{bad}"
            );
        }
        assert_eq!(
            lv(Level::Restricted, Version::Latest).to_string(),
            "restricted:latest"
        );
        assert_eq!(
            lv(Level::Baseline, Version::V1(25)).to_string(),
            "baseline:v1.25"
        );
    }

    #[test]
    fn no_labels_is_privileged_everywhere() {
        for labels in [json!(null), json!({}), json!({"app": "x"})] {
            let (p, errs) = policy_from_labels(&labels);
            assert!(errs.is_empty());
            assert!(p.fully_privileged());
            assert_eq!(p, NamespacePolicy::default());
        }
    }

    #[test]
    fn enforce_sets_warn_unless_warn_is_labelled() {
        let (p, errs) = policy_from_labels(&json!({
            ENFORCE_LABEL: "restricted",
            ENFORCE_VERSION_LABEL: "v1.30",
        }));
        assert!(errs.is_empty());
        assert_eq!(p.enforce, lv(Level::Restricted, Version::V1(30)));
        assert_eq!(p.warn, lv(Level::Restricted, Version::V1(30)));
        assert_eq!(p.audit, LevelVersion::PRIVILEGED_LATEST);

        let (p, _) = policy_from_labels(&json!({
            ENFORCE_LABEL: "baseline",
            WARN_LABEL: "privileged",
        }));
        assert_eq!(p.warn.level, Level::Privileged);

        // A labelled warn version stays.
        let (p, _) = policy_from_labels(&json!({
            ENFORCE_LABEL: "baseline",
            ENFORCE_VERSION_LABEL: "v1.20",
            WARN_VERSION_LABEL: "v1.25",
        }));
        assert_eq!(p.warn, lv(Level::Baseline, Version::V1(25)));

        // A stricter warn is kept.
        let (p, _) = policy_from_labels(&json!({
            ENFORCE_LABEL: "baseline",
            WARN_LABEL: "restricted",
            AUDIT_LABEL: "baseline",
            AUDIT_VERSION_LABEL: "v1.29",
        }));
        assert_eq!(p.warn, lv(Level::Restricted, Version::Latest));
        assert_eq!(p.audit, lv(Level::Baseline, Version::V1(29)));
    }

    #[test]
    fn invalid_labels_fail_closed_for_enforce_and_open_for_the_rest() {
        let (p, errs) = policy_from_labels(&json!({
            ENFORCE_LABEL: "strict",
            ENFORCE_VERSION_LABEL: "1.25",
            AUDIT_LABEL: "x",
            WARN_LABEL: "",
        }));
        assert_eq!(p.enforce, lv(Level::Restricted, Version::Latest));
        assert_eq!(p.audit.level, Level::Privileged);
        assert_eq!(p.warn.level, Level::Privileged);
        let labels: Vec<&str> = errs.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                ENFORCE_LABEL,
                ENFORCE_VERSION_LABEL,
                AUDIT_LABEL,
                WARN_LABEL
            ]
        );
        assert_eq!(
            errs[0].to_string(),
            "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"
        );
        assert_eq!(
            errs[1].message(),
            "Invalid value: \"1.25\": must be \"latest\" or \"v1.x\""
        );
        assert_eq!(
            errs[1].field(),
            "metadata.labels[pod-security.kubernetes.io/enforce-version]"
        );
        assert_eq!(aggregate_errors(&errs[..1]), errs[0].to_string());
        assert_eq!(
            aggregate_errors(&errs[..2]),
            format!("[{}, {}]", errs[0], errs[1])
        );
        // An invalid enforce level does not raise warn.
        let (p, _) = policy_from_labels(&json!({ENFORCE_LABEL: "bad"}));
        assert_eq!(p.warn.level, Level::Privileged);
    }
}
