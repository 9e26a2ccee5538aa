//! A container's environment: the image's, then `envFrom`, then `env` (values, field and
//! resource references, ConfigMap and Secret keys), as the kubelet merges them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;

use super::Kubelet;

/// Where container data comes from: a ConfigMap's or a Secret's keys.
#[derive(Clone, Copy)]
pub enum Source {
    ConfigMap,
    Secret,
}

/// The keys of a ConfigMap (`binaryData` included) or Secret; `None` if it does not exist.
/// Without a server, as last read (`offline`).
pub async fn source_data(
    k: &Kubelet,
    ns: &str,
    kind: Source,
    name: &str,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    Ok(match kind {
        Source::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(k.client.clone(), ns);
            k.offline.get(&api, name).await?.map(|c| {
                let mut data: BTreeMap<String, Vec<u8>> = c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(
                    c.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                data
            })
        }
        Source::Secret => {
            let api: Api<Secret> = Api::namespaced(k.client.clone(), ns);
            k.offline.get(&api, name).await?.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            })
        }
    })
}

async fn config_map(
    k: &Kubelet,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    as_text(source_data(k, ns, Source::ConfigMap, name).await?)
}

async fn secret(
    k: &Kubelet,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    as_text(source_data(k, ns, Source::Secret, name).await?)
}

fn as_text(
    data: Option<BTreeMap<String, Vec<u8>>>,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    Ok(data.map(|d| {
        d.into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }))
}

/// A `fieldRef` of the downward API.
pub fn field(pod: &Pod, path: &str, node: &str) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let bracket = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|key| {
                map.as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    if let Some(v) = bracket("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = bracket("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_else(|| node.to_string()),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        "status.hostIP" => status.host_ip.unwrap_or_default(),
        other => anyhow::bail!("unsupported fieldRef {other:?}"),
    })
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub async fn container_env(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    run: &kinglet_image::RunConfig,
) -> anyhow::Result<Vec<String>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env: Vec<(String, String)> = run
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    // As containerd does for images that set no PATH.
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(r) = &from.config_map_ref {
            (
                config_map(k, &ns, &r.name).await?,
                format!("configmap \"{}\"", r.name),
                r.optional == Some(true),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                secret(k, &ns, &r.name).await?,
                format!("secret \"{}\"", r.name),
                r.optional == Some(true),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (key, v) in d {
                    set(&mut env, format!("{prefix}{key}"), v);
                }
            }
            None if optional => {}
            None => anyhow::bail!("{what} not found"),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or(""), &env),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, &k.cfg.node_name)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(c, &r.resource)
                } else if let Some(r) = &from.config_map_key_ref {
                    let data = config_map(k, &ns, &r.name).await?;
                    match key_value(data, "ConfigMap", &ns, &r.name, &r.key, r.optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = secret(k, &ns, &r.name).await?;
                    match key_value(data, "Secret", &ns, &r.name, &r.key, r.optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    continue;
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), super::hostname(pod)));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// `key` of a ConfigMap's or Secret's `data` (None: the source is missing), with upstream's
/// messages when it is missing and not optional.
fn key_value(
    data: Option<BTreeMap<String, String>>,
    kind: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> anyhow::Result<Option<String>> {
    let optional = optional == Some(true);
    match data {
        None if optional => Ok(None),
        None => anyhow::bail!("{} \"{name}\" not found", kind.to_lowercase()),
        Some(mut d) => match d.remove(key) {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => anyhow::bail!("couldn't find key {key} in {kind} {ns}/{name}"),
        },
    }
}

/// `$(VAR)` references to earlier variables, `$$` as a literal `$`.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(end) = after.strip_prefix('(').and_then(|a| a.find(')')) {
            let name = &after[1..1 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &after[end + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn resource_field(c: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("", resource));
    let r = c.resources.clone().unwrap_or_default();
    let map = if kind == "limits" {
        r.limits
    } else {
        r.requests
    };
    let q = map.and_then(|m| m.get(name).map(|q| q.0.clone()));
    let milli = q.as_deref().and_then(kinglet_core::resources::parse_milli);
    match (name, milli) {
        // As upstream: cpu rounded up to whole cores, memory in bytes.
        ("cpu", Some(m)) => ((m + 999) / 1000).to_string(),
        (_, Some(m)) => (m / 1000).to_string(),
        ("cpu", None) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
        _ => "0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_references_expand() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }
}
