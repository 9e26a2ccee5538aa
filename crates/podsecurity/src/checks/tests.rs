//! Each check against pods that pass and fail it, with upstream's exact texts.

use serde_json::{Value, json};

use super::*;

const LATEST: Version = Version::Latest;

fn baseline() -> LevelVersion {
    LevelVersion::new(Level::Baseline, LATEST)
}

fn restricted() -> LevelVersion {
    LevelVersion::new(Level::Restricted, LATEST)
}

/// A container that passes every restricted check.
fn good_container(name: &str) -> Value {
    json!({
        "name": name,
        "image": "busybox",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
    })
}

/// A pod spec that passes every restricted check.
fn good_spec() -> Value {
    json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [good_container("init")],
        "containers": [good_container("a"), good_container("b")],
    })
}

fn check(lv: LevelVersion, metadata: &Value, spec: &Value) -> Vec<Violation> {
    check_pod(lv, metadata, spec)
}

/// The only violation of `spec` at `lv`, as "reason (detail)".
fn only(lv: LevelVersion, spec: &Value) -> String {
    let v = check(lv, &json!({}), spec);
    assert_eq!(v.len(), 1, "{v:?}");
    forbidden_detail(&v)
}

fn passes(lv: LevelVersion, spec: &Value) -> bool {
    check(lv, &json!({}), spec).is_empty()
}

/// `good_spec` with `f` applied.
fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut spec = good_spec();
    f(&mut spec);
    spec
}

fn sc<'a>(spec: &'a mut Value, list: &str, i: usize) -> &'a mut Value {
    &mut spec[list][i]["securityContext"]
}

#[test]
fn table_is_in_upstream_order() {
    // Baseline checks first, then restricted ones, each sorted by id bytewise (Go's order).
    let levels: Vec<Level> = CHECKS.iter().map(|c| c.level).collect();
    let mut sorted_levels = levels.clone();
    sorted_levels.sort();
    assert_eq!(levels, sorted_levels);
    for level in [Level::Baseline, Level::Restricted] {
        let ids: Vec<&[u8]> = CHECKS
            .iter()
            .filter(|c| c.level == level)
            .map(|c| c.id.as_bytes())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
    // Overrides name baseline checks.
    for c in CHECKS {
        for o in c.overrides {
            assert!(
                CHECKS
                    .iter()
                    .any(|b| b.id == *o && b.level == Level::Baseline)
            );
        }
    }
}

#[test]
fn good_pod_passes_every_level_and_version() {
    for minor in [0, 8, 19, 22, 25, 31, 32, 33, 99] {
        for level in [Level::Baseline, Level::Restricted] {
            let lv = LevelVersion::new(level, Version::V1(minor));
            assert!(passes(lv, &good_spec()), "{lv}");
        }
    }
    assert!(passes(restricted(), &good_spec()));
}

#[test]
fn privileged_level_allows_anything() {
    let spec = with(|s| {
        s["hostNetwork"] = json!(true);
        sc(s, "containers", 0)["privileged"] = json!(true);
    });
    assert!(passes(LevelVersion::new(Level::Privileged, LATEST), &spec));
    assert!(!passes(baseline(), &spec));
}

#[test]
fn host_process() {
    let spec = with(|s| {
        s["securityContext"]["windowsOptions"] = json!({"hostProcess": true});
        sc(s, "containers", 0)["windowsOptions"] = json!({"hostProcess": true});
        sc(s, "containers", 1)["windowsOptions"] = json!({"hostProcess": true});
    });
    assert_eq!(
        only(baseline(), &spec),
        "hostProcess (pod and containers \"a\", \"b\" must not set securityContext.windowsOptions.hostProcess=true)"
    );
    let spec =
        with(|s| sc(s, "initContainers", 0)["windowsOptions"] = json!({"hostProcess": true}));
    assert_eq!(
        only(restricted(), &spec),
        "hostProcess (container \"init\" must not set securityContext.windowsOptions.hostProcess=true)"
    );
    let spec = with(|s| s["securityContext"]["windowsOptions"] = json!({"hostProcess": false}));
    assert!(passes(baseline(), &spec));
}

#[test]
fn host_namespaces() {
    let spec = with(|s| {
        s["hostNetwork"] = json!(true);
        s["hostPID"] = json!(true);
        s["hostIPC"] = json!(true);
    });
    assert_eq!(
        only(baseline(), &spec),
        "host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"
    );
    let spec = with(|s| s["hostIPC"] = json!(true));
    assert_eq!(only(restricted(), &spec), "host namespaces (hostIPC=true)");
    let spec = with(|s| {
        s["hostNetwork"] = json!(false);
        s["hostPID"] = Value::Null;
    });
    assert!(passes(restricted(), &spec));
}

#[test]
fn privileged_containers() {
    let spec = with(|s| {
        sc(s, "containers", 0)["privileged"] = json!(true);
        sc(s, "containers", 1)["privileged"] = json!(false);
    });
    assert_eq!(
        only(baseline(), &spec),
        "privileged (container \"a\" must not set securityContext.privileged=true)"
    );
    let spec = with(|s| {
        sc(s, "initContainers", 0)["privileged"] = json!(true);
        sc(s, "containers", 1)["privileged"] = json!(true);
    });
    assert_eq!(
        only(baseline(), &spec),
        "privileged (containers \"init\", \"b\" must not set securityContext.privileged=true)"
    );
    // Ephemeral containers are checked too, after the others.
    let spec = with(|s| {
        s["ephemeralContainers"] =
            json!([{"name": "debug", "securityContext": {"privileged": true}}]);
    });
    assert!(
        forbidden_detail(&check(baseline(), &json!({}), &spec)).starts_with(
            "privileged (container \"debug\" must not set securityContext.privileged=true)"
        )
    );
}

#[test]
fn capabilities_baseline_allows_the_default_set() {
    let spec = with(|s| {
        sc(s, "containers", 0)["capabilities"]["add"] =
            json!(["CHOWN", "NET_BIND_SERVICE", "KILL"]);
    });
    assert!(passes(baseline(), &spec));
    let spec = with(|s| {
        sc(s, "containers", 0)["capabilities"]["add"] = json!(["SYS_ADMIN", "CHOWN", "NET_RAW"]);
        sc(s, "containers", 1)["capabilities"]["add"] = json!(["BPF", "NET_RAW"]);
    });
    assert_eq!(
        only(baseline(), &spec),
        "non-default capabilities (containers \"a\", \"b\" must not include \"BPF\", \"NET_RAW\", \"SYS_ADMIN\" in securityContext.capabilities.add)"
    );
}

#[test]
fn host_path_volumes_and_restricted_volume_types() {
    let spec = with(|s| {
        s["volumes"] = json!([
            {"name": "ok", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": "/"}},
            {"name": "nfs", "nfs": {"server": "x", "path": "/"}},
        ]);
    });
    assert_eq!(
        only(baseline(), &spec),
        "hostPath volumes (volume \"host\")"
    );
    // Restricted replaces the hostPath check with its volume type check.
    assert_eq!(
        only(restricted(), &spec),
        "restricted volume types (volumes \"host\", \"nfs\" use restricted volume types \"hostPath\", \"nfs\")"
    );
    let spec = with(|s| {
        s["volumes"] = json!([
            {"name": "a", "configMap": {"name": "x"}},
            {"name": "b", "secret": {"secretName": "x"}},
            {"name": "c", "projected": {"sources": []}},
            {"name": "d", "downwardAPI": {}},
            {"name": "e", "persistentVolumeClaim": {"claimName": "x"}},
            {"name": "f", "csi": {"driver": "x"}},
            {"name": "g", "ephemeral": {}},
            {"name": "h", "image": {"reference": "x"}},
            {"name": "i", "emptyDir": {}},
        ]);
    });
    assert!(passes(restricted(), &spec));
    let spec = with(|s| s["volumes"] = json!([{"name": "git", "gitRepo": {"repository": "x"}}]));
    assert!(passes(baseline(), &spec));
    assert_eq!(
        only(restricted(), &spec),
        "restricted volume types (volume \"git\" uses restricted volume type \"gitRepo\")"
    );
    // Upstream defaults a volume without a (known) source to an emptyDir.
    let spec =
        with(|s| s["volumes"] = json!([{"name": "none"}, {"name": "odd", "somethingNew": {}}]));
    assert!(passes(restricted(), &spec));
    let spec = with(|s| {
        s["volumes"] = json!([
            {"name": "h1", "hostPath": {"path": "/a"}},
            {"name": "h2", "hostPath": {"path": "/b"}},
        ])
    });
    assert_eq!(
        only(baseline(), &spec),
        "hostPath volumes (volumes \"h1\", \"h2\")"
    );
    assert_eq!(
        only(restricted(), &spec),
        "restricted volume types (volumes \"h1\", \"h2\" use restricted volume type \"hostPath\")"
    );
}

#[test]
fn host_ports() {
    let spec = with(|s| {
        s["containers"][0]["ports"] =
            json!([{"containerPort": 80}, {"containerPort": 80, "hostPort": 0}]);
    });
    assert!(passes(baseline(), &spec));
    let spec =
        with(|s| s["containers"][1]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]));
    assert_eq!(
        only(baseline(), &spec),
        "hostPort (container \"b\" uses hostPort 8080)"
    );
    let spec = with(|s| {
        s["containers"][0]["ports"] = json!([{"hostPort": 80}, {"hostPort": 8080}]);
        s["containers"][1]["ports"] = json!([{"hostPort": 443}]);
    });
    // Sorted as strings, as upstream's string set.
    assert_eq!(
        only(restricted(), &spec),
        "hostPort (containers \"a\", \"b\" use hostPorts 443, 80, 8080)"
    );
}

#[test]
fn app_armor() {
    let spec = with(|s| {
        s["securityContext"]["appArmorProfile"] =
            json!({"type": "Localhost", "localhostProfile": "x"});
        sc(s, "containers", 0)["appArmorProfile"] = json!({"type": "RuntimeDefault"});
    });
    assert!(passes(baseline(), &spec));
    let spec = with(|s| s["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"}));
    assert_eq!(
        only(baseline(), &spec),
        "forbidden AppArmor profile (pod must not set AppArmor profile type to \"Unconfined\")"
    );
    let spec = with(|s| {
        sc(s, "containers", 1)["appArmorProfile"] = json!({"type": "Unconfined"});
    });
    let metadata = json!({"annotations": {
        "container.apparmor.security.beta.kubernetes.io/b": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/a": "runtime/default",
        "container.apparmor.security.beta.kubernetes.io/init": "localhost/x",
        "other": "unconfined",
    }});
    assert_eq!(
        forbidden_detail(&check(baseline(), &metadata, &spec)),
        "forbidden AppArmor profiles (container \"b\" and annotation must not set AppArmor profile type to \"Unconfined\", \"container.apparmor.security.beta.kubernetes.io/b=\"unconfined\"\")"
    );
    let metadata = json!({"annotations": {
        "container.apparmor.security.beta.kubernetes.io/b": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/a": "bad",
    }});
    assert_eq!(
        forbidden_detail(&check(restricted(), &metadata, &good_spec())),
        "forbidden AppArmor profiles (annotations must not set AppArmor profile type to \"container.apparmor.security.beta.kubernetes.io/a=\"bad\"\", \"container.apparmor.security.beta.kubernetes.io/b=\"unconfined\"\")"
    );
}

#[test]
fn se_linux() {
    let spec = with(|s| {
        s["securityContext"]["seLinuxOptions"] = json!({"type": "container_t", "level": "s0:c1"});
        sc(s, "containers", 0)["seLinuxOptions"] = json!({"type": "container_init_t"});
        sc(s, "containers", 1)["seLinuxOptions"] = json!({"type": "container_engine_t"});
    });
    assert!(passes(baseline(), &spec));
    // container_engine_t is allowed from 1.31.
    assert_eq!(
        only(LevelVersion::new(Level::Baseline, Version::V1(30)), &spec),
        "seLinuxOptions (container \"b\" set forbidden securityContext.seLinuxOptions: type \"container_engine_t\")"
    );
    let spec = with(|s| {
        s["securityContext"]["seLinuxOptions"] = json!({"type": "foo", "user": "u"});
        sc(s, "containers", 0)["seLinuxOptions"] = json!({"type": "bar", "role": "r"});
        sc(s, "containers", 1)["seLinuxOptions"] = json!({"type": "spc_t"});
    });
    assert_eq!(
        only(restricted(), &spec),
        "seLinuxOptions (pod and containers \"a\", \"b\" set forbidden securityContext.seLinuxOptions: types \"bar\", \"foo\", \"spc_t\"; user may not be set; role may not be set)"
    );
    let spec = with(|s| s["securityContext"]["seLinuxOptions"] = json!({"user": "u"}));
    assert_eq!(
        only(baseline(), &spec),
        "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: user may not be set)"
    );
}

#[test]
fn proc_mount() {
    let spec = with(|s| sc(s, "containers", 0)["procMount"] = json!("Default"));
    assert!(passes(restricted(), &spec));
    let spec = with(|s| {
        sc(s, "containers", 0)["procMount"] = json!("Unmasked");
        sc(s, "containers", 1)["procMount"] = json!("other");
    });
    assert_eq!(
        only(baseline(), &spec),
        "procMount (containers \"a\", \"b\" must not set securityContext.procMount to \"Unmasked\", \"other\")"
    );
}

#[test]
fn seccomp_baseline() {
    // Unset is fine for baseline; explicit Unconfined is not.
    let spec = json!({"containers": [{"name": "a"}]});
    assert!(passes(baseline(), &spec));
    let spec = json!({
        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
        "containers": [
            {"name": "a", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
            {"name": "b", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p"}}},
            {"name": "c", "securityContext": {"seccompProfile": {"type": "Other"}}},
        ],
    });
    assert_eq!(
        only(baseline(), &spec),
        "seccompProfile (pod and containers \"a\", \"c\" must not set securityContext.seccompProfile.type to \"Other\", \"Unconfined\")"
    );
    // Before 1.19 the alpha annotations are checked instead of the fields.
    let v118 = LevelVersion::new(Level::Baseline, Version::V1(18));
    assert!(passes(v118, &spec));
    let metadata = json!({"annotations": {
        "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
        "container.seccomp.security.alpha.kubernetes.io/a": "docker/default",
        "container.seccomp.security.alpha.kubernetes.io/c": "unknown",
    }});
    assert_eq!(
        forbidden_detail(&check(v118, &metadata, &spec)),
        "seccompProfile (forbidden annotations container.seccomp.security.alpha.kubernetes.io/c=\"unknown\", seccomp.security.alpha.kubernetes.io/pod=\"unconfined\")"
    );
    assert!(
        check(
            baseline(),
            &metadata,
            &json!({"containers": [{"name": "a"}]})
        )
        .is_empty()
    );
}

#[test]
fn seccomp_restricted() {
    let spec = with(|s| s["securityContext"]["seccompProfile"] = Value::Null);
    assert_eq!(
        only(restricted(), &spec),
        "seccompProfile (pod or containers \"init\", \"a\", \"b\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    // Setting it on every container is enough.
    let spec = with(|s| {
        s["securityContext"]["seccompProfile"] = Value::Null;
        for (list, i) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
            sc(s, list, i)["seccompProfile"] = json!({"type": "Localhost"});
        }
    });
    assert!(passes(restricted(), &spec));
    // An explicit bad value is reported before unset containers.
    let spec = with(|s| {
        s["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
        sc(s, "containers", 0)["seccompProfile"] = json!({"type": "RuntimeDefault"});
    });
    assert_eq!(
        only(restricted(), &spec),
        "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"
    );
    let spec = with(|s| sc(s, "containers", 1)["seccompProfile"] = json!({"type": "Unconfined"}));
    assert_eq!(
        only(restricted(), &spec),
        "seccompProfile (container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\")"
    );
}

#[test]
fn sysctls_by_version() {
    let with_sysctls = |names: &[&str]| {
        with(|s| {
            s["securityContext"]["sysctls"] = names
                .iter()
                .map(|n| json!({"name": n, "value": "1"}))
                .collect::<Value>();
        })
    };
    let safe = with_sysctls(&["kernel.shm_rmid_forced", "net.ipv4.tcp_wmem"]);
    assert!(passes(baseline(), &safe));
    assert_eq!(
        only(LevelVersion::new(Level::Baseline, Version::V1(31)), &safe),
        "forbidden sysctls (net.ipv4.tcp_wmem)"
    );
    let keepalive = with_sysctls(&["net.ipv4.tcp_keepalive_time"]);
    assert!(passes(
        LevelVersion::new(Level::Baseline, Version::V1(29)),
        &keepalive
    ));
    assert!(!passes(
        LevelVersion::new(Level::Baseline, Version::V1(28)),
        &keepalive
    ));
    let reserved = with_sysctls(&["net.ipv4.ip_local_reserved_ports"]);
    assert!(passes(
        LevelVersion::new(Level::Baseline, Version::V1(27)),
        &reserved
    ));
    assert!(!passes(
        LevelVersion::new(Level::Baseline, Version::V1(26)),
        &reserved
    ));
    // In the order given, not sorted.
    let bad = with_sysctls(&["kernel.msgmax", "net.ipv4.tcp_syncookies", "fs.mqueue.x"]);
    assert_eq!(
        only(restricted(), &bad),
        "forbidden sysctls (kernel.msgmax, fs.mqueue.x)"
    );
}

#[test]
fn allow_privilege_escalation() {
    let spec = with(|s| {
        sc(s, "containers", 0)["allowPrivilegeEscalation"] = json!(true);
        sc(s, "containers", 1)["allowPrivilegeEscalation"] = Value::Null;
    });
    assert!(passes(baseline(), &spec));
    assert_eq!(
        only(restricted(), &spec),
        "allowPrivilegeEscalation != false (containers \"a\", \"b\" must set securityContext.allowPrivilegeEscalation=false)"
    );
    // Not checked before 1.8.
    assert!(passes(
        LevelVersion::new(Level::Restricted, Version::V1(7)),
        &spec
    ));
}

#[test]
fn capabilities_restricted() {
    let spec = with(|s| {
        sc(s, "containers", 0)["capabilities"] =
            json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]});
    });
    assert!(passes(restricted(), &spec));
    let spec = with(|s| {
        sc(s, "containers", 0)["capabilities"] =
            json!({"drop": ["NET_RAW"], "add": ["CHOWN", "SYS_ADMIN"]});
        sc(s, "containers", 1)["capabilities"] = Value::Null;
        sc(s, "initContainers", 0)["capabilities"]["add"] = json!(["BAR"]);
    });
    assert_eq!(
        only(restricted(), &spec),
        "unrestricted capabilities (containers \"a\", \"b\" must set securityContext.capabilities.drop=[\"ALL\"]; containers \"init\", \"a\" must not include \"BAR\", \"CHOWN\", \"SYS_ADMIN\" in securityContext.capabilities.add)"
    );
    // Restricted replaces the baseline capabilities check from 1.22; before it, the baseline
    // check applies (and drop ALL is not required).
    let v121 = LevelVersion::new(Level::Restricted, Version::V1(21));
    assert_eq!(
        only(v121, &spec),
        "non-default capabilities (containers \"init\", \"a\" must not include \"BAR\", \"SYS_ADMIN\" in securityContext.capabilities.add)"
    );
}

#[test]
fn run_as_non_root() {
    let spec = with(|s| s["securityContext"]["runAsNonRoot"] = Value::Null);
    assert_eq!(
        only(restricted(), &spec),
        "runAsNonRoot != true (pod or containers \"init\", \"a\", \"b\" must set securityContext.runAsNonRoot=true)"
    );
    let spec = with(|s| {
        s["securityContext"]["runAsNonRoot"] = Value::Null;
        for (list, i) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
            sc(s, list, i)["runAsNonRoot"] = json!(true);
        }
    });
    assert!(passes(restricted(), &spec));
    let spec = with(|s| {
        s["securityContext"]["runAsNonRoot"] = json!(false);
        sc(s, "containers", 1)["runAsNonRoot"] = json!(false);
    });
    assert_eq!(
        only(restricted(), &spec),
        "runAsNonRoot != true (pod and container \"b\" must not set securityContext.runAsNonRoot=false)"
    );
    assert!(passes(baseline(), &spec));
}

#[test]
fn run_as_user() {
    let spec = with(|s| {
        s["securityContext"]["runAsUser"] = json!(1000);
        sc(s, "containers", 0)["runAsUser"] = json!(1);
    });
    assert!(passes(restricted(), &spec));
    let spec = with(|s| {
        s["securityContext"]["runAsUser"] = json!(0);
        sc(s, "containers", 0)["runAsUser"] = json!(0);
        sc(s, "initContainers", 0)["runAsUser"] = json!(0);
    });
    assert_eq!(
        only(restricted(), &spec),
        "runAsUser=0 (pod and containers \"init\", \"a\" must not set runAsUser=0)"
    );
    assert!(passes(baseline(), &spec));
    // From 1.23.
    assert!(passes(
        LevelVersion::new(Level::Restricted, Version::V1(22)),
        &spec
    ));
}

#[test]
fn windows_pods_skip_linux_only_checks_from_1_25() {
    let spec = json!({"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": true}, "containers": [{"name": "w"}]});
    assert!(passes(restricted(), &spec));
    let v124 = LevelVersion::new(Level::Restricted, Version::V1(24));
    let reasons: Vec<String> = check(v124, &json!({}), &spec)
        .into_iter()
        .map(|v| v.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "allowPrivilegeEscalation != false",
            "unrestricted capabilities",
            "seccompProfile"
        ]
    );
}

#[test]
fn kubectl_run_privileged_in_restricted_and_baseline() {
    // What `kubectl run x --image=busybox --privileged` sends.
    let metadata = json!({"name": "x", "labels": {"run": "x"}});
    let spec = json!({
        "containers": [{"name": "x", "image": "busybox", "securityContext": {"privileged": true}}],
        "restartPolicy": "Always",
    });
    assert_eq!(
        forbidden_detail(&check(restricted(), &metadata, &spec)),
        "privileged (container \"x\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"x\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"x\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"x\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"x\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert_eq!(
        forbidden_detail(&check(baseline(), &metadata, &spec)),
        "privileged (container \"x\" must not set securityContext.privileged=true)"
    );
    assert_eq!(
        forbidden_reasons(&check(restricted(), &metadata, &spec)),
        "privileged, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
}

#[test]
fn everything_wrong_in_upstream_order() {
    let metadata =
        json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}});
    let spec = json!({
        "hostNetwork": true,
        "securityContext": {
            "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
            "seLinuxOptions": {"type": "spc_t"},
            "runAsUser": 0,
            "windowsOptions": {"hostProcess": true},
        },
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{
            "name": "c",
            "ports": [{"containerPort": 1, "hostPort": 1}],
            "securityContext": {
                "privileged": true,
                "procMount": "Unmasked",
                "capabilities": {"add": ["SYS_ADMIN"]},
                "seccompProfile": {"type": "Unconfined"},
            },
        }],
    });
    let reasons = |lv| {
        check(lv, &metadata, &spec)
            .into_iter()
            .map(|v| v.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reasons(baseline()),
        [
            "forbidden AppArmor profile",
            "non-default capabilities",
            "host namespaces",
            "hostPath volumes",
            "hostPort",
            "privileged",
            "procMount",
            "seLinuxOptions",
            "seccompProfile",
            "forbidden sysctls",
            "hostProcess",
        ]
    );
    assert_eq!(
        reasons(restricted()),
        [
            "forbidden AppArmor profile",
            "host namespaces",
            "hostPort",
            "privileged",
            "procMount",
            "seLinuxOptions",
            "forbidden sysctls",
            "hostProcess",
            "allowPrivilegeEscalation != false",
            "unrestricted capabilities",
            "restricted volume types",
            "runAsNonRoot != true",
            "runAsUser=0",
            "seccompProfile",
        ]
    );
}

#[test]
fn garbage_input_does_not_panic() {
    for spec in [
        json!(null),
        json!("x"),
        json!([]),
        json!({"containers": "x", "volumes": 3}),
        json!({"containers": [null, 1, {"securityContext": "x"}, {"ports": [null, {"hostPort": "x"}]}]}),
        json!({"securityContext": {"sysctls": [1, null], "seccompProfile": 5}, "volumes": [null, 2]}),
    ] {
        for level in [Level::Baseline, Level::Restricted] {
            let _ = check(
                LevelVersion::new(level, LATEST),
                &json!({"annotations": 1}),
                &spec,
            );
        }
    }
}
