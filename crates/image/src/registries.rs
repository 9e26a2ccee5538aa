//! `registries.yaml`, in k3s's format: registry mirrors (endpoints tried in order, with
//! rewrites of the repository path), and per-host credentials and TLS settings.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://mirror.example.com:5000"]
//!     rewrite: {"^library/(.*)": "mirror/$1"}
//!   "*":
//!     endpoint: ["https://fallback.example.com"]
//! configs:
//!   mirror.example.com:5000:
//!     auth: {username: u, password: p}
//!     tls: {ca_file: /etc/ssl/private-ca.pem}
//! ```
//!
//! As in containerd, a registry's mirror endpoints are tried first and then the registry
//! itself (the "default endpoint", where rewrites do not apply), unless the default endpoint
//! is disabled. The file holds secrets: nothing here logs or prints them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use serde::Deserialize;

use super::pull::Credentials;

/// The parsed file; the default (no file) uses every registry directly.
#[derive(Clone, Default)]
pub struct Registries {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    mirrors: BTreeMap<String, Mirror>,
    configs: BTreeMap<String, HostConfig>,
    disable_default_endpoint: bool,
}

struct Mirror {
    endpoints: Vec<Endpoint>,
    /// In the file's order: the first pattern that matches rewrites the repository.
    rewrites: Vec<(regex::Regex, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    http: bool,
    /// `host[:port]`.
    host: String,
}

/// Credentials and TLS settings for one host.
#[derive(Clone, Default)]
pub(crate) struct HostConfig {
    pub auth: Option<Credentials>,
    /// PEM certificates of the CAs to trust besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    /// Whether a `tls` section is present: the host speaks HTTPS even on loopback.
    pub tls: bool,
}

/// One place to pull from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub host: String,
    pub http: bool,
    /// The repository path at this endpoint (rewritten for mirrors).
    pub repository: String,
    /// The registry itself rather than a mirror.
    pub default: bool,
}

impl fmt::Debug for Registries {
    // Hosts only: credentials stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registries")
            .field("mirrors", &self.inner.mirrors.keys().collect::<Vec<_>>())
            .field("configs", &self.inner.configs.keys().collect::<Vec<_>>())
            .field(
                "disable_default_endpoint",
                &self.inner.disable_default_endpoint,
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFormat>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFormat {
    #[serde(default)]
    endpoint: Vec<String>,
    /// A mapping, kept in order.
    #[serde(default)]
    rewrite: serde_yaml::Mapping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFormat {
    auth: Option<AuthFormat>,
    tls: Option<TlsFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFormat {
    username: Option<String>,
    password: Option<String>,
    /// base64 of `user:password`, as in Docker's config.json.
    auth: Option<String>,
    identity_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFormat {
    ca_file: Option<std::path::PathBuf>,
    cert_file: Option<std::path::PathBuf>,
    key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl Registries {
    /// Reads `path`; a missing file means no mirrors and no settings. Errors name the file and
    /// the problem on one line.
    pub fn load(path: &Path, disable_default_endpoint: bool) -> anyhow::Result<Registries> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Registries::default().with_default_endpoint(!disable_default_endpoint));
            }
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        };
        Registries::parse(&text)
            .map(|r| r.with_default_endpoint(!disable_default_endpoint))
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    fn with_default_endpoint(mut self, enabled: bool) -> Registries {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.disable_default_endpoint = !enabled;
        }
        self
    }

    /// Parses the file's text (CA files it names are read now).
    pub fn parse(text: &str) -> anyhow::Result<Registries> {
        // An empty file (or one with only comments) is an empty configuration.
        let file: FileFormat = match serde_yaml::from_str::<Option<FileFormat>>(text) {
            Ok(f) => f.unwrap_or(FileFormat {
                mirrors: BTreeMap::new(),
                configs: BTreeMap::new(),
            }),
            Err(e) => anyhow::bail!("{e}"),
        };
        let mut inner = Inner::default();
        for (name, m) in file.mirrors {
            let mut endpoints = Vec::new();
            for e in &m.endpoint {
                endpoints.push(
                    parse_endpoint(e)
                        .with_context(|| format!("mirrors.{name:?}: endpoint {e:?}"))?,
                );
            }
            let mut rewrites = Vec::new();
            for (pattern, replacement) in &m.rewrite {
                let (Some(pattern), Some(replacement)) = (pattern.as_str(), replacement.as_str())
                else {
                    anyhow::bail!(
                        "mirrors.{name:?}: rewrite: patterns and replacements must be strings"
                    );
                };
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        let first = e.to_string().lines().last().unwrap_or_default().to_string();
                        anyhow::anyhow!("mirrors.{name:?}: rewrite {pattern:?}: {}", first.trim())
                    })?;
                rewrites.push((re, replacement.to_string()));
            }
            inner.mirrors.insert(
                name,
                Mirror {
                    endpoints,
                    rewrites,
                },
            );
        }
        for (key, c) in file.configs {
            let host = host_of_key(&key);
            let config = host_config(&c).with_context(|| format!("configs.{key:?}"))?;
            inner.configs.insert(host, config);
        }
        Ok(Registries {
            inner: Arc::new(inner),
        })
    }

    /// Where to pull `registry/repository` from, in order.
    pub(crate) fn attempts(&self, registry: &str, repository: &str) -> Vec<Attempt> {
        let mirror = (self.inner.mirrors.get(registry)).or_else(|| self.inner.mirrors.get("*"));
        let mut out = Vec::new();
        if let Some(m) = mirror {
            let rewritten = m
                .rewrites
                .iter()
                .find(|(re, _)| re.is_match(repository))
                .map(|(re, with)| re.replace_all(repository, with.as_str()).into_owned())
                .unwrap_or_else(|| repository.to_string());
            for e in &m.endpoints {
                out.push(Attempt {
                    host: e.host.clone(),
                    http: e.http,
                    repository: rewritten.clone(),
                    default: false,
                });
            }
        }
        // Disabling the default endpoint only concerns registries the file configures.
        if mirror.is_none() || !self.inner.disable_default_endpoint {
            let tls = self.inner.configs.get(registry).is_some_and(|c| c.tls);
            let default = Attempt {
                host: registry.to_string(),
                http: is_loopback(registry) && !tls,
                repository: repository.to_string(),
                default: true,
            };
            let listed = out.iter().any(|a| {
                (&a.host, a.http, &a.repository)
                    == (&default.host, default.http, &default.repository)
            });
            if !listed {
                out.push(default);
            }
        }
        out
    }

    /// The settings for `host` (`host[:port]`), if the file has any.
    pub(crate) fn config(&self, host: &str) -> Option<&HostConfig> {
        self.inner.configs.get(host)
    }
}

/// `https://host:port`, `http://host`, or a bare `host:port` (HTTPS); a path other than the
/// API's own `/v2` is refused rather than silently dropped.
fn parse_endpoint(s: &str) -> anyhow::Result<Endpoint> {
    let (http, rest) = match s.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some((scheme, _)) => anyhow::bail!("scheme {scheme:?} is not http or https"),
        None => (false, s),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    anyhow::ensure!(
        matches!(path, "" | "/" | "/v2" | "/v2/"),
        "paths other than /v2 are not supported"
    );
    anyhow::ensure!(
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c)),
        "not a host[:port]"
    );
    Ok(Endpoint {
        http,
        host: host.to_ascii_lowercase(),
    })
}

/// Config keys are `host[:port]`; a URL is accepted too.
fn host_of_key(key: &str) -> String {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

fn host_config(c: &ConfigFormat) -> anyhow::Result<HostConfig> {
    let mut out = HostConfig::default();
    if let Some(a) = &c.auth {
        anyhow::ensure!(
            a.identity_token.is_none(),
            "auth.identity_token (OAuth2 refresh tokens) is not supported; use username and password"
        );
        out.auth = match (&a.username, &a.auth) {
            (Some(u), _) => Some(Credentials {
                username: u.clone(),
                password: a.password.clone().unwrap_or_default(),
            }),
            (None, Some(encoded)) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                // The value itself is a secret: the error does not repeat it.
                let (u, p) = decoded
                    .as_deref()
                    .and_then(|d| d.split_once(':'))
                    .ok_or_else(|| anyhow::anyhow!("auth.auth is not base64 of user:password"))?;
                Some(Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                })
            }
            (None, None) => {
                anyhow::ensure!(
                    a.password.is_none(),
                    "auth.password is given without auth.username"
                );
                None
            }
        };
    }
    if let Some(t) = &c.tls {
        out.tls = true;
        out.insecure_skip_verify = t.insecure_skip_verify;
        anyhow::ensure!(
            t.cert_file.is_none() && t.key_file.is_none(),
            "tls.cert_file and tls.key_file (client certificates) are not supported yet"
        );
        if let Some(ca) = &t.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("tls.ca_file {}", ca.display()))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|c| !c.is_empty());
            anyhow::ensure!(
                certs.is_some(),
                "tls.ca_file {}: no PEM certificate in it",
                ca.display()
            );
            out.ca_pem = Some(pem);
        }
    }
    Ok(out)
}

/// Registries on loopback speak plain HTTP, as Docker and containerd allow for them.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(registry)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(host: &str, http: bool, repository: &str, default: bool) -> Attempt {
        Attempt {
            host: host.into(),
            http,
            repository: repository.into(),
            default,
        }
    }

    #[test]
    fn no_file_pulls_from_the_registry_itself() {
        let r = Registries::load(Path::new("/nonexistent/registries.yaml"), false).unwrap();
        assert_eq!(
            r.attempts("docker.io", "library/busybox"),
            [attempt("docker.io", false, "library/busybox", true)]
        );
        assert_eq!(
            r.attempts("127.0.0.1:5000", "app"),
            [attempt("127.0.0.1:5000", true, "app", true)]
        );
        let empty = Registries::parse("# nothing yet\n").unwrap();
        assert_eq!(empty.attempts("quay.io", "a/b").len(), 1);
    }

    #[test]
    fn mirrors_come_first_with_rewrites_then_the_default_endpoint() {
        let r = Registries::parse(
            r#"
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example.com:5000"
      - "http://10.0.0.1:5000/v2"
      - "plain.example.com"
    rewrite:
      "^library/(.*)": "mirror/$1"
      "^(.*)$": "never/$1"
  "*":
    endpoint: ["https://all.example.com"]
"#,
        )
        .unwrap();
        assert_eq!(
            r.attempts("docker.io", "library/busybox"),
            [
                attempt("mirror.example.com:5000", false, "mirror/busybox", false),
                attempt("10.0.0.1:5000", true, "mirror/busybox", false),
                attempt("plain.example.com", false, "mirror/busybox", false),
                attempt("docker.io", false, "library/busybox", true),
            ]
        );
        // The first matching rewrite wins, in the file's order.
        assert_eq!(
            r.attempts("docker.io", "rancher/x")[0].repository,
            "never/rancher/x"
        );
        // Registries without their own entry use the wildcard mirror.
        assert_eq!(
            r.attempts("quay.io", "a/b"),
            [
                attempt("all.example.com", false, "a/b", false),
                attempt("quay.io", false, "a/b", true),
            ]
        );
    }

    #[test]
    fn the_default_endpoint_can_be_disabled_for_configured_registries() {
        let text = "mirrors:\n  example.invalid:\n    endpoint: [\"http://127.0.0.1:5000\"]\n";
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), text).unwrap();
        let r = Registries::load(path.path(), true).unwrap();
        assert_eq!(
            r.attempts("example.invalid", "library/busybox"),
            [attempt("127.0.0.1:5000", true, "library/busybox", false)]
        );
        // A registry the file does not name is still pulled from directly.
        assert_eq!(
            r.attempts("quay.io", "a"),
            [attempt("quay.io", false, "a", true)]
        );
    }

    #[test]
    fn configs_give_credentials_and_tls_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let text = format!(
            r#"
configs:
  "127.0.0.1:5443":
    auth: {{username: user, password: pass}}
    tls: {{ca_file: {}}}
  "https://other.example.com":
    auth: {{auth: "{}"}}
    tls: {{insecure_skip_verify: true}}
"#,
            ca.display(),
            base64::engine::general_purpose::STANDARD.encode("u2:p:2")
        );
        let r = Registries::parse(&text).unwrap();
        let c = r.config("127.0.0.1:5443").unwrap();
        let auth = c.auth.as_ref().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("user", "pass")
        );
        assert!(c.ca_pem.is_some() && !c.insecure_skip_verify);
        // A tls section makes a loopback registry an HTTPS one.
        assert_eq!(
            r.attempts("127.0.0.1:5443", "a"),
            [attempt("127.0.0.1:5443", false, "a", true)]
        );
        let o = r.config("other.example.com").unwrap();
        let auth = o.auth.as_ref().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("u2", "p:2")
        );
        assert!(o.insecure_skip_verify && o.ca_pem.is_none());
        // Debug output names hosts, never secrets.
        let debug = format!("{r:?}");
        assert!(debug.contains("127.0.0.1:5443") && !debug.contains("pass"));
    }

    #[test]
    fn bad_files_are_one_line_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.yaml");
        for (text, problem) in [
            ("mirrors: [", "expected a map at line 1"),
            ("mirrors: {docker.io: {}", "line"),
            ("mirror: {}", "unknown field `mirror`"),
            (
                "mirrors:\n  docker.io:\n    endpoints: [x]\n",
                "unknown field `endpoints`",
            ),
            (
                "mirrors:\n  d:\n    endpoint: [\"ftp://x\"]\n",
                "scheme \"ftp\"",
            ),
            (
                "mirrors:\n  d:\n    endpoint: [\"https://x/path\"]\n",
                "paths other than /v2",
            ),
            ("mirrors:\n  d:\n    rewrite: {\"(\": x}\n", "rewrite \"(\""),
            (
                "configs:\n  h:\n    tls: {ca_file: /nonexistent/ca.pem}\n",
                "/nonexistent/ca.pem",
            ),
            (
                "configs:\n  h:\n    tls: {cert_file: /c, key_file: /k}\n",
                "client certificates",
            ),
            (
                "configs:\n  h:\n    auth: {auth: \"c2VjcmV0\"}\n",
                "not base64 of user:password",
            ),
            (
                "configs:\n  h:\n    auth: {identity_token: t}\n",
                "identity_token",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", Registries::load(&path, false).unwrap_err());
            assert!(e.starts_with(&path.display().to_string()), "{e}");
            assert!(e.contains(problem), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/registries.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        // Its CA file is on the device, not here.
        let text = text.replace("      ca_file: /etc/kinglet/registry-ca.pem\n", "");
        let r = Registries::parse(&text).unwrap();
        assert_eq!(
            r.attempts("docker.io", "library/busybox"),
            [
                attempt(
                    "mirror.example.internal:5000",
                    false,
                    "dockerhub/busybox",
                    false
                ),
                attempt("docker.io", false, "library/busybox", true),
            ]
        );
        assert_eq!(
            r.attempts("quay.io", "a/b")[0].host,
            "cache.example.internal"
        );
        assert!(
            r.config("mirror.example.internal:5000")
                .unwrap()
                .auth
                .is_some()
        );
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("registry.example.com:443"));
    }
}
