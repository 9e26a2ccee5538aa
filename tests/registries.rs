//! `--private-registry` (`registries.yaml`, k3s's format): mirrors with rewrites, and a
//! registry behind TLS from a private CA with basic auth, pulled by pods and by
//! `kinglet images pull`. Registries are Debian's `docker-registry` on a test host's loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;

use common::{Server, eventually, host::TestHost};

/// A `docker-registry` in a test host; killed when dropped.
struct Registry {
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a registry on `addr` in `host`, storing under `dir/<name>`, with TLS (`cert`, `key`
/// files) and htpasswd auth (`user`:`pass`) when given.
fn registry(
    host: &TestHost,
    dir: &Path,
    name: &str,
    addr: &str,
    tls: Option<(&Path, &Path)>,
    auth: Option<(&str, &str)>,
) -> Registry {
    let mut config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
        dir.join(name).display()
    );
    if let Some((cert, key)) = tls {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
    }
    if let Some((user, pass)) = auth {
        let htpasswd = dir.join(format!("{name}.htpasswd"));
        std::fs::write(
            &htpasswd,
            format!("{user}:{}\n", bcrypt::hash(pass, 5).unwrap()),
        )
        .unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: kinglet-test\n    path: {}\n",
            htpasswd.display()
        ));
    }
    let file = dir.join(format!("{name}.yml"));
    std::fs::write(&file, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = host
        .command("docker-registry")
        .arg("serve")
        .arg(&file)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry (tests/run installs it)");
    Registry { child }
}

/// Pushes a busybox image that prints `greeting` to `dest` (`host:port/repo:tag`) with skopeo.
fn push(host: &TestHost, dir: &Path, dest: &str, creds: Option<&str>) {
    let archive = dir.join(format!("{}.tar", dest.replace(['/', ':'], "_")));
    common::images::write_busybox_image(&archive, "docker.io/library/busybox:1.36");
    eventually(30, "skopeo push to the registry", || {
        let mut cmd = host.command("skopeo");
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        cmd.arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
}

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'echo pulled ok; exec sleep 100000']\n"
    )
}

fn running_image_id(s: &Server, name: &str) -> String {
    eventually(90, &format!("pod {name} running"), || {
        let out = s.ok(&["get", "pod", name, "-o", "json"]);
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        let c = &p["status"]["containerStatuses"][0];
        c["state"]["running"]
            .is_object()
            .then(|| c["imageID"].as_str().unwrap_or_default().to_string())
    })
}

/// `kinglet images pull` in `host` with its own store and `registries` file.
fn cli_pull(host: &TestHost, dir: &Path, registries: &Path, image: &str) -> (bool, String) {
    let out = host
        .command(env!("CARGO_BIN_EXE_kinglet"))
        .args(["images", "--data-dir"])
        .arg(dir.join("cli-store"))
        .args(["pull", "--private-registry"])
        .arg(registries)
        .arg(image)
        .output()
        .expect("kinglet images pull");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn a_mirror_with_a_rewrite_serves_an_unreachable_registry() {
    let files = tempfile::tempdir().unwrap();
    let registries = files.path().join("registries.yaml");
    // The first endpoint has nothing listening: the second one, in order, serves the pull.
    // The registry itself (`example.invalid`) can never be reached, and with the default
    // endpoint disabled it is not even tried.
    std::fs::write(
        &registries,
        r#"mirrors:
  example.invalid:
    endpoint:
      - "http://127.0.0.1:5999"
      - "http://127.0.0.1:5000"
    rewrite:
      "^library/(.*)": "mirrored/$1"
"#,
    )
    .unwrap();
    let reg_arg = registries.display().to_string();
    let s = Server::start_node(&[
        "--private-registry",
        &reg_arg,
        "--disable-default-registry-endpoint",
    ]);
    let host = s.host.as_ref().unwrap();
    let dir = s.dir.path();
    let _registry = registry(host, dir, "mirror", "127.0.0.1:5000", None, None);
    push(host, dir, "127.0.0.1:5000/mirrored/busybox:1.36", None);

    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod("mirrored", "example.invalid/library/busybox:1.36"),
    );
    // Stored and reported under the name the pod asked for.
    let id = running_image_id(&s, "mirrored");
    assert!(
        id.starts_with("example.invalid/library/busybox@sha256:"),
        "{id}"
    );
    eventually(20, "logs", || {
        s.ok(&["logs", "mirrored"])
            .contains("pulled ok")
            .then_some(())
    });

    // Without the rewrite the mirror has no such repository, and the error names each
    // endpoint tried.
    std::fs::write(
        &registries,
        "mirrors:\n  example.invalid:\n    endpoint: [\"http://127.0.0.1:5999\", \"http://127.0.0.1:5000\"]\n",
    )
    .unwrap();
    let (ok, out) = cli_pull(
        host,
        dir,
        &registries,
        "example.invalid/library/busybox:1.36",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("mirror http://127.0.0.1:5999:")
            && out.contains("mirror http://127.0.0.1:5000:")
            && out.contains("default endpoint https://example.invalid:"),
        "{out}"
    );
}

#[test]
fn a_registry_with_a_private_ca_and_basic_auth_needs_its_config() {
    let files = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = common::tls_backend::make_certs(&["127.0.0.1"]);
    let (ca, cert, key) = (
        files.path().join("ca.pem"),
        files.path().join("registry.pem"),
        files.path().join("registry-key.pem"),
    );
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let write = |name: &str, text: String| -> PathBuf {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let full = write(
        "full.yaml",
        format!(
            "configs:\n  \"127.0.0.1:5443\":\n    auth: {{username: puller, password: s3cret-pw}}\n    tls: {{ca_file: {}}}\n",
            ca.display()
        ),
    );
    let reg_arg = full.display().to_string();
    let s = Server::start_node(&["--private-registry", &reg_arg]);
    let host = s.host.as_ref().unwrap();
    let dir = s.dir.path();
    let _registry = registry(
        host,
        dir,
        "private",
        "127.0.0.1:5443",
        Some((&cert, &key)),
        Some(("puller", "s3cret-pw")),
    );
    push(
        host,
        dir,
        "127.0.0.1:5443/team/bb:v1",
        Some("puller:s3cret-pw"),
    );
    let image = "127.0.0.1:5443/team/bb:v1";

    // Without a config: plain HTTP to a loopback registry, which speaks TLS.
    let (ok, out) = cli_pull(host, dir, &files.path().join("absent.yaml"), image);
    assert!(!ok, "{out}");
    // The CA but no credentials: the registry refuses.
    let no_auth = write(
        "no-auth.yaml",
        format!(
            "configs:\n  \"127.0.0.1:5443\":\n    tls: {{ca_file: {}}}\n",
            ca.display()
        ),
    );
    let (ok, out) = cli_pull(host, dir, &no_auth, image);
    assert!(!ok, "{out}");
    assert!(out.contains("Not authorized"), "{out}");
    // Credentials but only the system's CAs: the certificate is not trusted.
    let no_ca = write(
        "no-ca.yaml",
        "configs:\n  \"127.0.0.1:5443\":\n    auth: {username: puller, password: s3cret-pw}\n    tls: {}\n".into(),
    );
    let (ok, out) = cli_pull(host, dir, &no_ca, image);
    assert!(!ok, "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    assert!(!out.contains("s3cret-pw"), "the password leaked: {out}");
    // Both: the pull works from the command line...
    let (ok, out) = cli_pull(host, dir, &full, image);
    assert!(ok, "{out}");
    assert!(!out.contains("s3cret-pw"), "the password leaked: {out}");

    // ...and for a pod, with no pull secret.
    s.ok_stdin(&["apply", "-f", "-"], &pod("private", image));
    let id = running_image_id(&s, "private");
    assert!(id.starts_with("127.0.0.1:5443/team/bb@sha256:"), "{id}");
    assert!(
        !s.log().contains("s3cret-pw"),
        "the password is in the server's log"
    );
}

#[test]
fn a_bad_registries_file_stops_the_start_with_one_line() {
    let files = tempfile::tempdir().unwrap();
    let registries = files.path().join("registries.yaml");
    std::fs::write(
        &registries,
        "mirrors:\n  docker.io:\n    endpoint: [\"ftp://mirror.example.com\"]\n",
    )
    .unwrap();
    let expected = format!(
        "kinglet: --private-registry {}: mirrors.\"docker.io\": endpoint \"ftp://mirror.example.com\": scheme \"ftp\" is not http or https",
        registries.display()
    );
    let data = files.path().join("data");
    // The server (with its node) stops before it sets anything up; `images pull` likewise.
    let kubeconfig = files.path().join("kubeconfig.yaml");
    let config = files.path().join("config.yaml");
    std::fs::write(&config, "# no flags\n").unwrap();
    let server = std::process::Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .arg("server")
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .arg("--private-registry")
        .arg(&registries)
        .env_remove("KINGLET_CONFIG")
        .output()
        .unwrap();
    let pull = std::process::Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args(["images", "--data-dir"])
        .arg(&data)
        .args(["pull", "--private-registry"])
        .arg(&registries)
        .arg("busybox:1.36")
        .output()
        .unwrap();
    for out in [server, pull] {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim_end().ends_with(&expected), "{err}");
        assert_eq!(err.trim_end().lines().last(), Some(expected.as_str()));
    }
    assert!(!kubeconfig.exists());
}
