//! imagePullSecrets: registry credentials from `kubernetes.io/dockerconfigjson` Secrets.

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;

use super::Kubelet;
use kinglet_image::Credentials;

/// Credentials from the pod's pull secrets that name `image`'s registry.
pub async fn pull_credentials(k: &Kubelet, pod: &Pod, image: &str) -> Vec<Credentials> {
    let registry = image.split('/').next().unwrap_or_default().to_string();
    let api: Api<Secret> = Api::namespaced(k.client.clone(), &pod.namespace().unwrap_or_default());
    let mut out = Vec::new();
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default();
    for r in names {
        let Ok(Some(secret)) = k.offline.get(&api, &r.name).await else {
            continue;
        };
        let Some(data) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson").or_else(|| d.get(".dockercfg")))
        else {
            continue;
        };
        out.extend(from_docker_config(&data.0, &registry));
    }
    out
}

/// Entries of a docker config JSON for `registry` (`docker.io` also matches Docker Hub's URL).
fn from_docker_config(json: &[u8], registry: &str) -> Vec<Credentials> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let auths = v.get("auths").unwrap_or(&v);
    let Some(map) = auths.as_object() else {
        return Vec::new();
    };
    map.iter()
        .filter(|(host, _)| {
            let h = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default();
            h == registry || (registry == "docker.io" && h == "index.docker.io")
        })
        .filter_map(|(_, e)| {
            if let (Some(u), Some(p)) = (e["username"].as_str(), e["password"].as_str()) {
                return Some(Credentials {
                    username: u.into(),
                    password: p.into(),
                });
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(e["auth"].as_str()?)
                .ok()?;
            let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
            Some(Credentials {
                username: u.into(),
                password: p.into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_match_by_registry() {
        let json = br#"{"auths":{"127.0.0.1:5000":{"auth":"dTpw"},"other:1":{"username":"a","password":"b"}}}"#;
        let c = from_docker_config(json, "127.0.0.1:5000");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].username.as_str(), c[0].password.as_str()), ("u", "p"));
        assert!(from_docker_config(json, "elsewhere").is_empty());
        assert!(from_docker_config(b"not json", "x").is_empty());
    }
}
