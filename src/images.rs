//! `kinglet images import|ls|pull|rm`.

use crate::cli::{ImagesArgs, ImagesCommand};

use kinglet_image::{Credentials, ImageStore};

pub fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let store = ImageStore::open(&args.data_dir)?;
    match args.command {
        ImagesCommand::Import { files } => {
            for f in files {
                for img in store.import(&f)? {
                    println!("imported {} {}", short_id(&img.id), names(&img));
                }
            }
        }
        ImagesCommand::Ls { quiet } => {
            let mut images = store.list()?;
            images.sort_by(|a, b| a.names.cmp(&b.names));
            if !quiet {
                println!("{:<60} {:<14} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            }
            for img in images {
                let rows = if img.names.is_empty() {
                    vec!["<none>".to_string()]
                } else {
                    img.names.clone()
                };
                for name in rows {
                    if quiet {
                        println!("{}", if name == "<none>" { &img.id } else { &name });
                    } else {
                        println!(
                            "{name:<60} {:<14} {:>10}",
                            short_id(&img.id),
                            human_size(img.size)
                        );
                    }
                }
            }
        }
        ImagesCommand::Pull {
            images,
            username,
            password,
            private_registry,
            disable_default_registry_endpoint,
        } => {
            let registries = kinglet_image::Registries::load(
                &private_registry,
                disable_default_registry_endpoint,
            )
            .map_err(|e| anyhow::anyhow!("--private-registry {e:#}"))?;
            let credentials = username.map(|username| Credentials {
                username,
                password: password.unwrap_or_default(),
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            for name in images {
                let img = rt.block_on(store.pull(
                    &name,
                    credentials.as_ref(),
                    &registries,
                    &|line| eprintln!("{line}"),
                ))?;
                println!("pulled {} {}", short_id(&img.id), names(&img));
            }
        }
        ImagesCommand::Rm { images } => {
            for name in images {
                if let Some(img) = store.find(&name)? {
                    let users = users(&args.data_dir, &img);
                    anyhow::ensure!(
                        users.is_empty(),
                        "image {name} is in use by {}; delete those pods first",
                        users.join(", ")
                    );
                }
                for removed in store.remove(&name)? {
                    println!("removed {removed}");
                }
            }
        }
    }
    Ok(())
}

/// The containers the node keeps (running or exited, as upstream's `crictl rmi` counts them)
/// that use `img`, as `container <name> of pod <ns>/<pod>`, sorted. Containers record their
/// image as `name@<manifest digest>` in `<data-dir>/agent/containers/<id>/meta.json` (the
/// runtime's layout, read here without starting a runtime).
fn users(data_dir: &std::path::Path, img: &kinglet_image::Image) -> Vec<String> {
    let dirs = std::fs::read_dir(data_dir.join("agent/containers"));
    let mut out: Vec<String> = (dirs.into_iter().flatten().flatten())
        .filter_map(|e| kinglet_runtime::ContainerDir(e.path()).meta().ok())
        .filter(|m| m.image_id.rsplit_once('@').map(|(_, d)| d) == Some(img.manifest.as_str()))
        .map(|m| {
            format!(
                "container {} of pod {}/{}",
                m.container_name, m.pod_namespace, m.pod_name
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn names(img: &kinglet_image::Image) -> String {
    if img.names.is_empty() {
        "<none>".into()
    } else {
        img.names.join(", ")
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(dir: &std::path::Path, id: &str, pod: &str, name: &str, image_id: &str) {
        let meta = serde_json::json!({
            "id": id, "podUid": "u", "podNamespace": "default", "podName": pod,
            "containerName": name, "attempt": 0, "image": "busybox:1.36", "imageId": image_id,
            "lowerDirs": [], "logPath": "/dev/null", "logMaxBytes": 1, "logMaxFiles": 2,
            "cgroupPath": "/x", "createdAt": "2026-01-01T00:00:00Z"
        });
        let d = dir.join("agent/containers").join(id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("meta.json"), meta.to_string()).unwrap();
    }

    #[test]
    fn users_of_an_image_are_the_containers_naming_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let img = kinglet_image::Image {
            id: "sha256:c0".into(),
            manifest: "sha256:aa".into(),
            names: vec!["docker.io/library/busybox:1.36".into()],
            layers: vec![],
            size: 0,
        };
        assert!(users(dir.path(), &img).is_empty());
        let busybox = "docker.io/library/busybox:1.36@sha256:aa";
        container(dir.path(), "1", "web", "main", busybox);
        container(dir.path(), "2", "web", "main", busybox);
        container(dir.path(), "3", "bb", "sh", busybox);
        container(
            dir.path(),
            "4",
            "other",
            "x",
            "docker.io/library/nginx:1@sha256:bb",
        );
        // Not a container directory the runtime wrote.
        std::fs::create_dir_all(dir.path().join("agent/containers/junk")).unwrap();
        assert_eq!(
            users(dir.path(), &img),
            [
                "container main of pod default/web",
                "container sh of pod default/bb"
            ]
        );
    }
}
