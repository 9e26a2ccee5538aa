//! `kinglet check-config` on this machine: kinglet's nodes run here, so nothing required may
//! be missing, and every section is reported.

#[test]
fn check_config_passes_on_this_machine_and_reports_every_section() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .arg("check-config")
        .output()
        .expect("run kinglet check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "kernel:",
        "filesystems:",
        "cgroups:",
        "iptables:",
        "network:",
        "security:",
    ] {
        assert!(text.lines().any(|l| l == section), "{section}: {text}");
    }
    for check in [
        "  overlay: ok",
        "  cgroup version: ok",
        "  iptables-restore: ok",
        "  net.ipv4.ip_forward: ok",
        "  seccomp: ok",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(check)),
            "{check}: {text}"
        );
    }
    // Every line is `name: ok|warn|missing`, and a warning or a missing item carries a fix.
    for line in text.lines().filter(|l| l.starts_with("  ")) {
        let (_, rest) = line
            .rsplit_once(": ")
            .map_or(("", line), |_| line.trim_start().split_once(": ").unwrap());
        assert!(
            rest.starts_with("ok") || rest.starts_with("warn (fix: "),
            "{line}"
        );
    }
    assert!(
        text.lines().last().unwrap().starts_with("verdict: ok"),
        "{text}"
    );
}
