//! Image references (`busybox`, `localhost:5000/app:v1`, `repo@sha256:…`) parsed by the grammar
//! of Docker's distribution/reference, and normalized the way Docker and the CRI name images.
//!
//! Hand-written rather than `oci_client::Reference::from_str`: that one compiles a Unicode
//! regex on first use and keeps it for the life of the process, which cost the node 16 MB at
//! peak and 7 MB for good (docs/BENCHMARKS.md, idle memory). The grammar is small.

use std::fmt;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// `latest` when the reference names neither a tag nor a digest.
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// The errors of upstream's reference parser, with its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("invalid reference format")]
    Format,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("repository name must have at least one component")]
    Empty,
    #[error("repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")]
    TooLong,
    #[error("invalid repository name, cannot specify 64-byte hexadecimal strings")]
    Hexadecimal,
    #[error("invalid checksum digest format")]
    Digest,
    #[error("unsupported digest algorithm")]
    DigestAlgorithm,
    #[error("invalid checksum digest length")]
    DigestLength,
}

/// Parses `s` and fills in Docker's defaults: `docker.io`, `library/` and `latest`.
pub fn parse(s: &str) -> Result<ImageRef, Invalid> {
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Invalid::Hexadecimal);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
        None => (s, None),
    };
    // A tag follows the last ':' that has no '/' after it (a ':' before a '/' is a port).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err(Invalid::Format);
    }
    if !is_name(name) {
        let lowercase = name.to_ascii_lowercase();
        return Err(if is_name(&lowercase) {
            Invalid::Uppercase
        } else {
            Invalid::Format
        });
    }
    let (registry, repository) = split_domain(name);
    if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(Invalid::TooLong);
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some("latest".to_string()),
    };
    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest: digest.map(str::to_string),
    })
}

impl ImageRef {
    /// The same reference for the registry client.
    pub fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (self.tag.clone(), self.digest.clone()) {
            (Some(t), Some(d)) => {
                oci_client::Reference::with_tag_and_digest(registry, repository, t, d)
            }
            (None, Some(d)) => oci_client::Reference::with_digest(registry, repository, d),
            (t, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                t.unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

/// `registry/repository[:tag][@digest]`.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `[domain '/'] path-component ('/' path-component)*`: either reading of the first component
/// is allowed, as upstream's regex allows it; `split_domain` then decides which it is.
fn is_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let rest_ok = rest.iter().all(|p| is_path_component(p));
    (is_path_component(first) && rest_ok) || (is_domain(first) && !rest.is_empty() && rest_ok)
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separator `.`, `_`, `__` or one or more `-`.
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |i: usize| i < b.len() && (b[i].is_ascii_lowercase() || b[i].is_ascii_digit());
    let mut i = 0;
    loop {
        if !alnum(i) {
            return false;
        }
        while alnum(i) {
            i += 1;
        }
        match b.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            Some(b'-') => {
                while b.get(i) == Some(&b'-') {
                    i += 1
                }
            }
            Some(_) => return false,
        }
    }
}

/// `host [':' port]`, host a dotted name of `[a-zA-Z0-9-]` labels (no '-' at either end) or a
/// bracketed IPv6 address.
fn is_domain(s: &str) -> bool {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, after))
                if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') =>
            {
                match after {
                    "" => return true,
                    _ => return after.strip_prefix(':').is_some_and(is_port),
                }
            }
            _ => return false,
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label) && port.is_none_or(is_port)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(s: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    s.len() <= TAG_LENGTH_MAX
        && s.bytes().next().is_some_and(word)
        && s.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm ':' hex`, for the algorithms registries use, with their lengths; the errors are
/// upstream's, in its order.
fn check_digest(d: &str) -> Result<&str, Invalid> {
    let (algorithm, hex) = d.split_once(':').ok_or(Invalid::Format)?;
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|c| {
        c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::Format);
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(Invalid::DigestAlgorithm),
    };
    if hex.len() != want {
        return Err(Invalid::DigestLength);
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Invalid::Digest);
    }
    Ok(d)
}

/// Upstream's rule: the first component is a registry if it has a '.' or ':', is `localhost`,
/// or has capitals; otherwise the name is on Docker Hub, official images under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    #[test]
    fn names_normalize_like_docker() {
        let d = SHA;
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            ("user/app:v1", "docker.io/user/app:v1".into()),
            ("test.com:tag", "docker.io/library/test.com:tag".into()),
            ("test.com:5000", "docker.io/library/test.com:5000".into()),
            ("test.com/repo:tag", "test.com/repo:tag".into()),
            ("localhost/app", "localhost/app:latest".into()),
            (
                "localhost:5000/a/b/c:v_1.0-rc",
                "localhost:5000/a/b/c:v_1.0-rc".into(),
            ),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest".into()),
            ("[::1]:5000/app:x", "[::1]:5000/app:x".into()),
            ("Registry/app", "Registry/app:latest".into()),
            (
                "my-host/my--app__x.y_z",
                "docker.io/my-host/my--app__x.y_z:latest".into(),
            ),
            (
                &format!("busybox@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
            (
                &format!("busybox:1.36@{d}"),
                format!("docker.io/library/busybox:1.36@{d}"),
            ),
        ] {
            assert_eq!(parse(input).map(|r| r.to_string()), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_references_get_upstream_errors() {
        let long_name = format!("a/{}", "b".repeat(250));
        let long_tag = format!("busybox:{}", "t".repeat(129));
        for (input, want) in [
            ("", Invalid::Empty),
            ("Busybox", Invalid::Uppercase),
            ("docker.io/Library/busybox", Invalid::Uppercase),
            ("busy box", Invalid::Format),
            ("busybox:", Invalid::Format),
            ("busybox:.x", Invalid::Format),
            ("busybox:ünïcode", Invalid::Format),
            (long_tag.as_str(), Invalid::Format),
            ("a..b", Invalid::Format),
            ("a___b", Invalid::Format),
            ("-a", Invalid::Format),
            ("a/", Invalid::Format),
            ("/a", Invalid::Format),
            ("-host.com/a", Invalid::Format),
            ("host.com:port/a", Invalid::Format),
            (long_name.as_str(), Invalid::TooLong),
            ("busybox@sha256:abc", Invalid::Format),
            (
                &format!("busybox@{}", SHA.to_uppercase().replace("SHA", "sha")),
                Invalid::Digest,
            ),
            (
                "busybox@md5:0123456789abcdef0123456789abcdef",
                Invalid::DigestAlgorithm,
            ),
            (
                "busybox@sha256:0123456789abcdef0123456789abcdef",
                Invalid::DigestLength,
            ),
            (&"a".repeat(64), Invalid::Hexadecimal),
        ] {
            assert_eq!(parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn the_registry_client_gets_the_same_reference() {
        let r = parse(&format!("localhost:5000/app:v1@{SHA}"))
            .unwrap()
            .to_oci();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("localhost:5000", "app", Some("v1"), Some(SHA))
        );
        let r = parse("busybox").unwrap().to_oci();
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
    }
}
