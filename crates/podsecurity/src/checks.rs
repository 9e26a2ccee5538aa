//! The baseline and restricted checks of the Pod Security Standards, with upstream's reasons,
//! details and order (k8s.io/pod-security-admission/policy at Kubernetes 1.33).
//!
//! A check sees the pod's (or pod template's) metadata and spec as JSON. As in upstream's Go
//! types, a field that is missing or `null` is unset.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::policy::{Level, LevelVersion, Version};
use crate::text::{containers_phrase, go_quote, join_quote, pluralize};

#[cfg(test)]
mod tests;

/// One failed check: upstream's `ForbiddenReason` and `ForbiddenDetail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

impl Violation {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
        Some(Violation {
            reason: reason.into(),
            detail: detail.into(),
        })
    }
}

/// `reason (detail), reason (detail)`: the text after `violates PodSecurity "...": `.
pub fn forbidden_detail(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect();
    parts.join(", ")
}

/// `reason, reason`: the short form upstream uses for existing pods on a namespace update.
pub fn forbidden_reasons(violations: &[Violation]) -> String {
    let parts: Vec<&str> = violations.iter().map(|v| v.reason.as_str()).collect();
    parts.join(", ")
}

/// The newest minor version any check changed at; later versions and `latest` evaluate as it.
const NEWEST_MINOR: u64 = 32;

/// Runs the checks of `lv` on a pod's metadata and spec (JSON objects, or null). The result is
/// empty when the pod is allowed; `privileged` allows everything.
pub fn check_pod(lv: LevelVersion, metadata: &Value, spec: &Value) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return Vec::new();
    }
    let minor = match lv.version {
        Version::Latest => NEWEST_MINOR,
        Version::V1(m) => m.min(NEWEST_MINOR),
    };
    let pod = Pod { metadata, spec };
    let active = |c: &&Check| c.since <= minor;
    // Restricted checks replace the baseline checks they tighten.
    let overridden: Vec<&str> = if lv.level == Level::Restricted {
        CHECKS
            .iter()
            .filter(active)
            .filter(|c| c.level == Level::Restricted)
            .flat_map(|c| c.overrides.iter().copied())
            .collect()
    } else {
        Vec::new()
    };
    CHECKS
        .iter()
        .filter(active)
        .filter(|c| c.level <= lv.level && !overridden.contains(&c.id))
        .filter_map(|c| (c.run)(&pod, minor))
        .collect()
}

struct Check {
    id: &'static str,
    level: Level,
    /// The first minor version of 1.x the check applies to.
    since: u64,
    /// Baseline checks this restricted check replaces.
    overrides: &'static [&'static str],
    run: fn(&Pod, u64) -> Option<Violation>,
}

const fn check(
    id: &'static str,
    level: Level,
    since: u64,
    run: fn(&Pod, u64) -> Option<Violation>,
) -> Check {
    Check {
        id,
        level,
        since,
        overrides: &[],
        run,
    }
}

/// Upstream's evaluation order: baseline checks, then restricted ones, each sorted by id
/// (byte order; a unit test holds this table to it).
const CHECKS: &[Check] = &[
    check("appArmorProfile", Level::Baseline, 0, app_armor_profile),
    check(
        "capabilities_baseline",
        Level::Baseline,
        0,
        capabilities_baseline,
    ),
    check("hostNamespaces", Level::Baseline, 0, host_namespaces),
    check("hostPathVolumes", Level::Baseline, 0, host_path_volumes),
    check("hostPorts", Level::Baseline, 0, host_ports),
    check("privileged", Level::Baseline, 0, privileged),
    check("procMount", Level::Baseline, 0, proc_mount),
    check("seLinuxOptions", Level::Baseline, 0, se_linux_options),
    check(
        "seccompProfile_baseline",
        Level::Baseline,
        0,
        seccomp_baseline,
    ),
    check("sysctls", Level::Baseline, 0, sysctls),
    check(
        "windowsHostProcess",
        Level::Baseline,
        0,
        windows_host_process,
    ),
    check(
        "allowPrivilegeEscalation",
        Level::Restricted,
        8,
        allow_privilege_escalation,
    ),
    Check {
        overrides: &["capabilities_baseline"],
        ..check(
            "capabilities_restricted",
            Level::Restricted,
            22,
            capabilities_restricted,
        )
    },
    Check {
        overrides: &["hostPathVolumes"],
        ..check(
            "restrictedVolumes",
            Level::Restricted,
            0,
            restricted_volumes,
        )
    },
    check("runAsNonRoot", Level::Restricted, 0, run_as_non_root),
    check("runAsUser", Level::Restricted, 23, run_as_user),
    Check {
        overrides: &["seccompProfile_baseline"],
        ..check(
            "seccompProfile_restricted",
            Level::Restricted,
            19,
            seccomp_restricted,
        )
    },
];

/// A pod's metadata and spec as JSON.
struct Pod<'a> {
    metadata: &'a Value,
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    /// Init containers, containers, then ephemeral containers (upstream's visiting order).
    fn containers(&self) -> impl Iterator<Item = &'a Value> {
        let spec = self.spec;
        ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(move |key| items(spec, key))
    }

    fn security_context(&self) -> Option<&'a Value> {
        field(self.spec, "securityContext")
    }

    fn annotations(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        field(self.metadata, "annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
    }

    fn annotation(&self, key: &str) -> Option<&'a str> {
        field(self.metadata, "annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    }

    /// `spec.os.name: windows`: from 1.25 the Linux-only restricted checks skip such pods.
    fn is_windows(&self) -> bool {
        field(self.spec, "os").is_some_and(|os| text(os, "name") == "windows")
    }
}

/// A set field: present and not null.
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|f| !f.is_null())
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn flag(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

fn name(container: &Value) -> String {
    text(container, "name").to_string()
}

/// A container's `securityContext.<key>`, when set.
fn container_field<'a>(container: &'a Value, key: &str) -> Option<&'a Value> {
    field(container, "securityContext").and_then(|sc| field(sc, key))
}

fn pod_field<'a>(pod: &Pod<'a>, key: &str) -> Option<&'a Value> {
    pod.security_context().and_then(|sc| field(sc, key))
}

/// `pod`, `containers "a", "b"` or `pod and container "a"`: who set a forbidden value.
fn setters(pod_bad: bool, containers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if pod_bad {
        out.push("pod".to_string());
    }
    if !containers.is_empty() {
        out.push(containers_phrase(containers));
    }
    out
}

fn app_armor_profile(pod: &Pod, _: u64) -> Option<Violation> {
    let allowed = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut bad_values = BTreeSet::new();
    let mut pod_bad = false;
    if let Some(profile) = pod_field(pod, "appArmorProfile") {
        let t = text(profile, "type");
        if !allowed(t) {
            pod_bad = true;
            bad_values.insert(t.to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(profile) = container_field(c, "appArmorProfile") {
            let t = text(profile, "type");
            if !allowed(t) {
                bad_containers.push(name(c));
                bad_values.insert(t.to_string());
            }
        }
    }
    let mut who = setters(pod_bad, &bad_containers);

    // The deprecated beta annotations, checked at every version.
    const PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
    let mut annotations: Vec<String> = pod
        .annotations()
        .filter(|(k, v)| {
            k.starts_with(PREFIX)
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    annotations.sort();
    let mut values: Vec<String> = bad_values.into_iter().collect();
    if !annotations.is_empty() {
        who.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if who.is_empty() {
        return None;
    }
    Violation::new(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            who.join(" and "),
            join_quote(&values)
        ),
    )
}

fn capabilities_baseline(pod: &Pod, _: u64) -> Option<Violation> {
    const DEFAULT_SET: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let mut bad_containers = Vec::new();
    let mut added = BTreeSet::new();
    for c in pod.containers() {
        let Some(caps) = container_field(c, "capabilities") else {
            continue;
        };
        let mut valid = true;
        for cap in items(caps, "add") {
            let cap = cap.as_str().unwrap_or_default();
            if !DEFAULT_SET.contains(&cap) {
                valid = false;
                added.insert(cap.to_string());
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let added: Vec<String> = added.into_iter().collect();
    Violation::new(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_containers),
            join_quote(&added)
        ),
    )
}

fn host_namespaces(pod: &Pod, _: u64) -> Option<Violation> {
    let shared: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|key| flag(pod.spec, key) == Some(true))
        .map(|key| format!("{key}=true"))
        .collect();
    if shared.is_empty() {
        return None;
    }
    Violation::new("host namespaces", shared.join(", "))
}

fn host_path_volumes(pod: &Pod, _: u64) -> Option<Violation> {
    let volumes: Vec<String> = items(pod.spec, "volumes")
        .iter()
        .filter(|v| field(v, "hostPath").is_some())
        .map(name)
        .collect();
    if volumes.is_empty() {
        return None;
    }
    Violation::new(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", volumes.len()),
            join_quote(&volumes)
        ),
    )
}

fn host_ports(pod: &Pod, _: u64) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut ports = BTreeSet::new();
    for c in pod.containers() {
        let mut valid = true;
        for port in items(c, "ports") {
            let host_port = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            if host_port != 0 {
                valid = false;
                ports.insert(host_port.to_string());
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    Violation::new(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn privileged(pod: &Pod, _: u64) -> Option<Violation> {
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| container_field(c, "privileged").and_then(Value::as_bool) == Some(true))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    Violation::new(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(pod: &Pod, _: u64) -> Option<Violation> {
    // (Upstream relaxes this for user-namespaced pods only behind the alpha feature gate
    // UserNamespacesPodSecurityStandards, off by default.)
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in pod.containers() {
        if let Some(mount) = container_field(c, "procMount") {
            let mount = mount.as_str().unwrap_or_default();
            if mount != "Default" {
                bad.push(name(c));
                types.insert(mount.to_string());
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    Violation::new(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&types)
        ),
    )
}

fn se_linux_options(pod: &Pod, minor: u64) -> Option<Violation> {
    let allowed_type = |t: &str| {
        matches!(
            t,
            "" | "container_t" | "container_init_t" | "container_kvm_t"
        ) || (minor >= 31 && t == "container_engine_t")
    };
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |opts: &Value| {
        let mut ok = true;
        let t = text(opts, "type");
        if !allowed_type(t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if !text(opts, "user").is_empty() {
            ok = false;
            set_user = true;
        }
        if !text(opts, "role").is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let pod_bad = pod_field(pod, "seLinuxOptions").is_some_and(|o| !valid(o));
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(opts) = container_field(c, "seLinuxOptions")
            && !valid(opts)
        {
            bad_containers.push(name(c));
        }
    }
    let who = setters(pod_bad, &bad_containers);
    if who.is_empty() {
        return None;
    }
    let mut what = Vec::new();
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        what.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if set_user {
        what.push("user may not be set".to_string());
    }
    if set_role {
        what.push("role may not be set".to_string());
    }
    Violation::new(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            who.join(" and "),
            what.join("; ")
        ),
    )
}

fn valid_seccomp_type(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// The explicitly set seccomp profile types that are not allowed, and who set them.
fn bad_seccomp_setters(pod: &Pod) -> (bool, bool, Vec<String>, BTreeSet<String>) {
    let mut bad_values = BTreeSet::new();
    let mut pod_bad = false;
    let mut pod_good = false;
    if let Some(profile) = pod_field(pod, "seccompProfile") {
        let t = text(profile, "type");
        if valid_seccomp_type(t) {
            pod_good = true;
        } else {
            pod_bad = true;
            bad_values.insert(t.to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(profile) = container_field(c, "seccompProfile") {
            let t = text(profile, "type");
            if !valid_seccomp_type(t) {
                bad_containers.push(name(c));
                bad_values.insert(t.to_string());
            }
        }
    }
    (pod_bad, pod_good, bad_containers, bad_values)
}

fn seccomp_explicitly_bad(
    pod_bad: bool,
    bad_containers: &[String],
    bad_values: BTreeSet<String>,
) -> Option<Violation> {
    let who = setters(pod_bad, bad_containers);
    if who.is_empty() {
        return None;
    }
    let values: Vec<String> = bad_values.into_iter().collect();
    Violation::new(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            who.join(" and "),
            join_quote(&values)
        ),
    )
}

fn seccomp_baseline(pod: &Pod, minor: u64) -> Option<Violation> {
    if minor < 19 {
        return seccomp_baseline_annotations(pod);
    }
    let (pod_bad, _, bad_containers, bad_values) = bad_seccomp_setters(pod);
    seccomp_explicitly_bad(pod_bad, &bad_containers, bad_values)
}

/// Before 1.19 seccomp was set with alpha annotations.
fn seccomp_baseline_annotations(pod: &Pod) -> Option<Violation> {
    const POD_KEY: &str = "seccomp.security.alpha.kubernetes.io/pod";
    const CONTAINER_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let mut forbidden = BTreeSet::new();
    if let Some(v) = pod.annotation(POD_KEY)
        && !valid(v)
    {
        forbidden.insert(format!("{POD_KEY}={}", go_quote(v)));
    }
    for c in pod.containers() {
        let key = format!("{CONTAINER_PREFIX}{}", text(c, "name"));
        if let Some(v) = pod.annotation(&key)
            && !valid(v)
        {
            forbidden.insert(format!("{key}={}", go_quote(v)));
        }
    }
    if forbidden.is_empty() {
        return None;
    }
    let list: Vec<String> = forbidden.into_iter().collect();
    Violation::new(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            pluralize("annotation", "annotations", list.len()),
            list.join(", ")
        ),
    )
}

fn sysctls(pod: &Pod, minor: u64) -> Option<Violation> {
    let mut allowed = vec![
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    if minor >= 27 {
        allowed.push("net.ipv4.ip_local_reserved_ports");
    }
    if minor >= 29 {
        allowed.extend([
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ]);
    }
    if minor >= 32 {
        allowed.extend(["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]);
    }
    let forbidden: Vec<&str> = pod
        .security_context()
        .map(|sc| items(sc, "sysctls"))
        .unwrap_or_default()
        .iter()
        .map(|s| text(s, "name"))
        .filter(|n| !allowed.contains(n))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    Violation::new("forbidden sysctls", forbidden.join(", "))
}

fn windows_host_process(pod: &Pod, _: u64) -> Option<Violation> {
    let host_process = |sc: Option<&Value>| {
        sc.and_then(|sc| field(sc, "windowsOptions"))
            .and_then(|w| flag(w, "hostProcess"))
            == Some(true)
    };
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| host_process(field(c, "securityContext")))
        .map(name)
        .collect();
    let who = setters(host_process(pod.security_context()), &bad);
    if who.is_empty() {
        return None;
    }
    Violation::new(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            who.join(" and ")
        ),
    )
}

fn allow_privilege_escalation(pod: &Pod, minor: u64) -> Option<Violation> {
    if minor >= 25 && pod.is_windows() {
        return None;
    }
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| {
            container_field(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false)
        })
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    Violation::new(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn capabilities_restricted(pod: &Pod, minor: u64) -> Option<Violation> {
    if minor >= 25 && pod.is_windows() {
        return None;
    }
    let mut missing_drop_all = Vec::new();
    let mut adding_forbidden = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in pod.containers() {
        let Some(caps) = container_field(c, "capabilities") else {
            missing_drop_all.push(name(c));
            continue;
        };
        if !items(caps, "drop")
            .iter()
            .any(|d| d.as_str() == Some("ALL"))
        {
            missing_drop_all.push(name(c));
        }
        let mut adds = false;
        for cap in items(caps, "add") {
            let cap = cap.as_str().unwrap_or_default();
            if cap != "NET_BIND_SERVICE" {
                adds = true;
                forbidden.insert(cap.to_string());
            }
        }
        if adds {
            adding_forbidden.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding_forbidden.is_empty() {
        let forbidden: Vec<String> = forbidden.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding_forbidden),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    Violation::new("unrestricted capabilities", details.join("; "))
}

fn restricted_volumes(pod: &Pod, _: u64) -> Option<Violation> {
    const ALLOWED: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    // In upstream's order: a volume that (invalidly) sets two sources is named by the first.
    const RESTRICTED: &[&str] = &[
        "hostPath",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "nfs",
        "iscsi",
        "glusterfs",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "fc",
        "azureFile",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "portworxVolume",
        "scaleIO",
        "storageos",
    ];
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for v in items(pod.spec, "volumes") {
        if ALLOWED.iter().any(|t| field(v, t).is_some()) {
            continue;
        }
        // A volume without a known source is an emptyDir to upstream: its decoding drops
        // unknown fields and its defaulting makes a sourceless volume an emptyDir.
        let Some(t) = RESTRICTED.iter().find(|t| field(v, t).is_some()) else {
            continue;
        };
        bad.push(name(v));
        types.insert(t.to_string());
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    Violation::new(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types)
        ),
    )
}

fn run_as_non_root(pod: &Pod, _: u64) -> Option<Violation> {
    let pod_value = pod_field(pod, "runAsNonRoot").and_then(Value::as_bool);
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for c in pod.containers() {
        match container_field(c, "runAsNonRoot").and_then(Value::as_bool) {
            Some(true) => {}
            Some(false) => explicitly_bad.push(name(c)),
            None if pod_value != Some(true) => implicitly_bad.push(name(c)),
            None => {}
        }
    }
    let who = setters(pod_value == Some(false), &explicitly_bad);
    if !who.is_empty() {
        return Violation::new(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                who.join(" and ")
            ),
        );
    }
    if !implicitly_bad.is_empty() {
        return Violation::new(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicitly_bad)
            ),
        );
    }
    None
}

fn run_as_user(pod: &Pod, _: u64) -> Option<Violation> {
    let is_root = |v: Option<&Value>| v.and_then(Value::as_i64) == Some(0);
    let bad: Vec<String> = pod
        .containers()
        .filter(|c| is_root(container_field(c, "runAsUser")))
        .map(name)
        .collect();
    let who = setters(is_root(pod_field(pod, "runAsUser")), &bad);
    if who.is_empty() {
        return None;
    }
    Violation::new(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", who.join(" and ")),
    )
}

fn seccomp_restricted(pod: &Pod, minor: u64) -> Option<Violation> {
    if minor >= 25 && pod.is_windows() {
        return None;
    }
    let (pod_bad, pod_good, bad_containers, bad_values) = bad_seccomp_setters(pod);
    if let Some(v) = seccomp_explicitly_bad(pod_bad, &bad_containers, bad_values) {
        return Some(v);
    }
    // Containers that set nothing need a valid pod-level profile.
    let unset: Vec<String> = pod
        .containers()
        .filter(|c| !pod_good && container_field(c, "seccompProfile").is_none())
        .map(name)
        .collect();
    if unset.is_empty() {
        return None;
    }
    Violation::new(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset)
        ),
    )
}
