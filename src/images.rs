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
        } => {
            let credentials = username.map(|username| Credentials {
                username,
                password: password.unwrap_or_default(),
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            for name in images {
                let img = rt.block_on(
                    store.pull(&name, credentials.as_ref(), &|line| eprintln!("{line}")),
                )?;
                println!("pulled {} {}", short_id(&img.id), names(&img));
            }
        }
        ImagesCommand::Rm { images } => {
            for name in images {
                for removed in store.remove(&name)? {
                    println!("removed {removed}");
                }
            }
        }
    }
    Ok(())
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
