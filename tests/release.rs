//! The release artefacts (issue 22): `packaging/release` cross-builds kinglet for aarch64 with
//! Debian's cross gcc and multiarch libseccomp, and that binary - static, for the right machine,
//! its checksum file verifying - runs under qemu-user: `--version`, then an API-only server that
//! answers the real kubectl through the kubeconfig it wrote.
//!
//! The build here uses the dev profile (`--profile dev`): the same script, flags and linking as
//! the release artefacts, without the minutes of whole-program optimisation. As root (CI, where
//! tests/run installs the cross toolchain and qemu) a failed build fails the test; elsewhere it
//! is skipped with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{eventually, free_port, kubectl_default};

const QEMU: &str = "qemu-aarch64-static";

/// ELF e_machine of AArch64.
const EM_AARCH64: u16 = 183;
/// Program header type of the dynamic loader's path: absent in a static executable.
const PT_INTERP: u32 = 3;

/// `packaging/release --profile dev arm64` into `out`; None (with the reason printed) when it
/// cannot be built and we are not root.
fn build_arm64(out: &Path) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let as_root = nix::unistd::Uid::effective().is_root();
    let missing_qemu = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err();
    let result = if missing_qemu {
        Err(format!(
            "{QEMU} is not installed (Debian: qemu-user-static)"
        ))
    } else {
        // The suite's own RUSTFLAGS (scripts/static.sh for the host) must not reach the cross
        // build; the script starts from clean flags, as after a fresh login.
        Command::new(root.join("packaging/release"))
            .args(["--profile", "dev", "--out"])
            .arg(out)
            .arg("arm64")
            .env_remove("RUSTFLAGS")
            .output()
            .map_err(|e| format!("running packaging/release: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "packaging/release --profile dev arm64 failed ({}):\n{}",
                        o.status,
                        tail(&String::from_utf8_lossy(&o.stderr), 60)
                    ))
                }
            })
    };
    match result {
        Ok(()) => Some(out.join("kinglet-arm64")),
        Err(why) if !as_root => {
            eprintln!("skipped: the aarch64 artefact cannot be built here: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The ELF header's machine, and whether a program header asks for a dynamic loader
/// (64-bit little-endian files only, which is what an aarch64 build must be).
fn elf_machine_and_interp(bytes: &[u8]) -> (u16, bool) {
    assert!(
        bytes.len() > 64 && &bytes[..4] == b"\x7fELF",
        "not an ELF file"
    );
    assert_eq!(bytes[4], 2, "not a 64-bit ELF file");
    assert_eq!(bytes[5], 1, "not a little-endian ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let machine = u16_at(18);
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    (machine, interp)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// The emulated server, killed with the test.
struct Emulated(Child);

impl Drop for Emulated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn aarch64_binary_serves_kubectl_under_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(bin) = build_arm64(&dir.path().join("dist")) else {
        return;
    };

    // The artefact: an aarch64 executable with no dynamic loader, and its checksum file
    // verifies it in the layout install.sh downloads.
    let bytes = std::fs::read(&bin).expect("read the artefact");
    let (machine, interp) = elf_machine_and_interp(&bytes);
    assert_eq!(
        machine, EM_AARCH64,
        "kinglet-arm64 is not an aarch64 executable"
    );
    assert!(
        !interp,
        "kinglet-arm64 asks for a dynamic loader: not static"
    );
    let check = run(Command::new("sha256sum")
        .args(["-c", "sha256sum-arm64.txt"])
        .current_dir(dir.path().join("dist")));
    assert!(
        check.status.success(),
        "sha256sum -c sha256sum-arm64.txt: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let version = run(Command::new(QEMU).arg(&bin).arg("--version"));
    let stdout = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success(),
        "kinglet-arm64 --version under qemu: {} {stdout}{}",
        version.status,
        String::from_utf8_lossy(&version.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!(
            "kinglet v{} (Kubernetes API v1.33.0)",
            env!("CARGO_PKG_VERSION")
        )
    );

    // An API-only server, as Server::start runs the native one.
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "# flags for this test server\n").expect("config file");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    let mut server = Emulated(
        Command::new(QEMU)
            .arg(&bin)
            .args(["server", "--disable-agent"])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--advertise-address", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .arg("--config")
            .arg(&config)
            .env_remove("KINGLET_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kinglet-arm64 under qemu"),
    );
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let kubectl = |args: &[&str]| {
        run(Command::new(kubectl_default())
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .stdin(Stdio::null()))
    };
    // Emulated, unoptimised: start-up takes a while; the deadline only stops a hung test.
    eventually(300, "the emulated server's /readyz", || {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("kinglet-arm64 exited with {status}; log:\n{}", server_log());
        }
        (kubeconfig.exists() && kubectl(&["get", "--raw", "/readyz"]).status.success())
            .then_some(())
    });

    let ns = kubectl(&["get", "ns", "-o", "name"]);
    let names = String::from_utf8_lossy(&ns.stdout);
    assert!(
        ns.status.success(),
        "kubectl get ns: {}; log:\n{}",
        String::from_utf8_lossy(&ns.stderr),
        server_log()
    );
    for want in ["namespace/default", "namespace/kube-system"] {
        assert!(
            names.lines().any(|l| l == want),
            "kubectl get ns lacks {want}: {names}"
        );
    }
}
