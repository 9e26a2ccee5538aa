//! Parsing of API paths and query parameters, the way upstream's RequestInfoFactory does.

/// A request for a resource (`/apis/apps/v1/namespaces/default/deployments/x/scale`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Path segments after the subresource (proxy paths).
    pub rest: Vec<String>,
    /// The legacy `/watch/` path prefix was used.
    pub legacy_watch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiPath {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    GroupVersion(String, String),
    Resource(ResourcePath),
}

/// Parses an API path; None when it is not under `/api` or `/apis`.
pub fn parse_path(path: &str) -> Option<ApiPath> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Some(ApiPath::CoreVersions),
        ["apis"] => return Some(ApiPath::Groups),
        ["apis", g] => return Some(ApiPath::Group(g.to_string())),
        ["api", v] => return Some(ApiPath::GroupVersion(String::new(), v.to_string())),
        ["apis", g, v] => return Some(ApiPath::GroupVersion(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let mut rest: Vec<String> = rest.iter().map(|s| percent_decode(s)).collect();
    let mut rp = ResourcePath {
        group,
        version,
        ..Default::default()
    };
    if rest.first().map(String::as_str) == Some("watch") {
        rp.legacy_watch = true;
        rest.remove(0);
    }
    if rest.first().map(String::as_str) == Some("namespaces") && rest.len() > 1 {
        rp.namespace = Some(rest[1].clone());
        // `/namespaces/<ns>/status` and `/finalize` are subresources of the namespace itself.
        if rest.len() > 2 && !matches!(rest[2].as_str(), "status" | "finalize") {
            rest.drain(..2);
        }
    }
    let mut it = rest.into_iter();
    rp.resource = it.next()?;
    rp.name = it.next();
    rp.subresource = it.next();
    rp.rest = it.collect();
    if rp.resource == "namespaces" {
        rp.namespace = None;
    }
    Some(ApiPath::Resource(rp))
}

pub(crate) fn percent_decode(s: &str) -> String {
    // Hex digits are read as bytes: slicing the str could split a multi-byte character
    // (a URI may carry raw UTF-8), and `from_str_radix` would take `%+1` for an escape.
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, keeping repeated keys (`command=a&command=b`).
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|q| {
                q.split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (form_decode(k), form_decode(v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Query { pairs }
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1") | Some(""))
    }
}

fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse_path(path) {
            Some(ApiPath::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("/api"), Some(ApiPath::CoreVersions));
        assert_eq!(
            parse_path("/apis/apps/v1"),
            Some(ApiPath::GroupVersion("apps".into(), "v1".into()))
        );
        let r = res("/apis/apps/v1/namespaces/default/deployments/web/scale");
        assert_eq!(
            (
                r.group.as_str(),
                r.namespace.as_deref(),
                r.resource.as_str()
            ),
            ("apps", Some("default"), "deployments")
        );
        assert_eq!(
            (r.name.as_deref(), r.subresource.as_deref()),
            (Some("web"), Some("scale"))
        );
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = res("/api/v1/namespaces/foo/finalize");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("foo"), Some("finalize"))
        );
        let r = res("/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(r.rest, vec!["stats", "summary"]);
        let r = res("/api/v1/watch/namespaces/a/pods");
        assert!(r.legacy_watch);
        assert_eq!(parse_path("/healthz"), None);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Cenv+in+(a)&command=a&command=b&watch",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,env in (a)"));
        assert_eq!(q.all("command"), vec!["a", "b"]);
        assert!(q.flag("watch"));
    }
}
