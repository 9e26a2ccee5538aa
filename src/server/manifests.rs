//! Auto-deploy manifests, as k3s does: the YAML files (`*.yaml`, `*.yml`, several documents
//! each) in `<data-dir>/server/manifests/` are applied at start and whenever they change, with
//! server-side apply (field manager `kinglet`, forced). Each object carries the annotation
//! `kinglet.io/manifest: <file name>`; when a file goes away (or an object leaves its file),
//! what it had applied is deleted. `<name>.skip` (or `<name>.yaml.skip`) next to a file makes
//! it ignored: not applied, and its objects are left alone.
//!
//! The directory is polled (mtime is not trusted: the content's SHA-256 decides). What each
//! file applied is kept in `<data-dir>/server/manifests.state.json` (0600), so a file removed
//! while the server was down is still cleaned up. A file is hostile input: bad YAML, an unknown
//! kind or a rejection by the API are logged once per content of the file, and change nothing
//! else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::serde::Deserialize;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The annotation naming the file an object came from.
pub const ANNOTATION: &str = "kinglet.io/manifest";
/// The field manager of the applies.
const MANAGER: &str = "kinglet";
const POLL: Duration = Duration::from_secs(2);
/// Larger files are refused (a manifest is not a disk image).
const MAX_FILE: u64 = 16 << 20;

/// One object a file applied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjRef {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl ObjRef {
    fn to_json(&self) -> Value {
        json!({
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        })
    }

    fn from_json(v: &Value) -> Option<ObjRef> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(ObjRef {
            api_version: s("apiVersion")?,
            kind: s("kind")?,
            namespace: s("namespace"),
            name: s("name")?,
        })
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {}/{}", self.kind, ns, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// What a file last applied completely: its content's digest and its objects.
#[derive(Clone, Debug, Default, PartialEq)]
struct Applied {
    hash: String,
    objects: BTreeSet<ObjRef>,
}

type State = BTreeMap<String, Applied>;

fn load_state(path: &Path) -> State {
    let Ok(text) = std::fs::read_to_string(path) else {
        return State::new();
    };
    let Ok(Value::Object(files)) = serde_json::from_str::<Value>(&text) else {
        tracing::warn!("manifests: ignoring unreadable state {}", path.display());
        return State::new();
    };
    files
        .iter()
        .map(|(file, v)| {
            let hash = v.get("hash").and_then(Value::as_str).unwrap_or("").into();
            let objects = v
                .get("objects")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(ObjRef::from_json).collect())
                .unwrap_or_default();
            (file.clone(), Applied { hash, objects })
        })
        .collect()
}

fn save_state(path: &Path, state: &State) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let v: serde_json::Map<String, Value> = state
        .iter()
        .map(|(file, a)| {
            let objects: Vec<Value> = a.objects.iter().map(ObjRef::to_json).collect();
            (file.clone(), json!({"hash": a.hash, "objects": objects}))
        })
        .collect();
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(&Value::Object(v))?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The directory's manifest files, by file name, and the names of the skipped ones.
fn scan(dir: &Path) -> (BTreeMap<String, PathBuf>, BTreeSet<String>) {
    let mut files = BTreeMap::new();
    let mut skips = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (files, skips);
    };
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".skip") {
            skips.insert(stem.to_owned());
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            // Follows symlinks; directories and the like are not manifests.
            if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
                files.insert(name, e.path());
            }
        }
    }
    (files, skips)
}

/// Whether `file` (`foo.yaml`) is skipped: `foo.skip` or `foo.yaml.skip` exists.
fn skipped(file: &str, skips: &BTreeSet<String>) -> bool {
    let stem = file
        .strip_suffix(".yaml")
        .or_else(|| file.strip_suffix(".yml"))
        .unwrap_or(file);
    skips.contains(stem) || skips.contains(file)
}

/// The objects of a (multi-document) YAML file; `kind: List` documents give their items.
fn parse(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("document {}: invalid YAML: {e}", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref m) => {
                let is_list = m.get("kind").and_then(Value::as_str) == Some("List");
                match m.get("items").and_then(Value::as_array) {
                    Some(items) if is_list => {
                        for item in items {
                            anyhow::ensure!(
                                item.is_object(),
                                "document {}: a List item is not an object",
                                i + 1
                            );
                            out.push(item.clone());
                        }
                    }
                    _ => out.push(v),
                }
            }
            _ => anyhow::bail!("document {}: not an object", i + 1),
        }
    }
    Ok(out)
}

/// The group/version/kind and name of an object.
fn identity(obj: &Value) -> anyhow::Result<(GroupVersionKind, String)> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let api_version = s("apiVersion").ok_or_else(|| anyhow::anyhow!("no apiVersion"))?;
    let kind = s("kind").ok_or_else(|| anyhow::anyhow!("no kind"))?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{kind} without metadata.name"))?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    Ok((GroupVersionKind::gvk(group, version, kind), name.to_owned()))
}

async fn api_for(
    client: &kube::Client,
    gvk: &GroupVersionKind,
    namespace: Option<&str>,
) -> anyhow::Result<(Api<DynamicObject>, bool)> {
    let (ar, caps) = kube::discovery::pinned_kind(client, gvk)
        .await
        .map_err(|e| anyhow::anyhow!("unknown kind {}/{}: {e}", gvk.api_version(), gvk.kind))?;
    Ok(match caps.scope {
        Scope::Namespaced => {
            let ns = namespace.unwrap_or("default");
            (Api::namespaced_with(client.clone(), ns, &ar), true)
        }
        Scope::Cluster => (Api::all_with(client.clone(), &ar), false),
    })
}

/// Applies one object for `file`; returns what it applied.
async fn apply_one(client: &kube::Client, file: &str, mut obj: Value) -> anyhow::Result<ObjRef> {
    let (gvk, name) = identity(&obj)?;
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let (api, namespaced) = api_for(client, &gvk, namespace.as_deref()).await?;
    let namespace = namespaced.then(|| namespace.unwrap_or_else(|| "default".into()));
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow::anyhow!("metadata is not an object"))?;
    match &namespace {
        Some(ns) => meta.insert("namespace".into(), json!(ns)),
        None => meta.remove("namespace"),
    };
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("metadata.annotations is not a map"))?;
    annotations.insert(ANNOTATION.into(), json!(file));
    let r = ObjRef {
        api_version: gvk.api_version(),
        kind: gvk.kind.clone(),
        namespace,
        name,
    };
    api.patch(
        &r.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .map_err(|e| anyhow::anyhow!("applying {}: {e}", r.describe()))?;
    Ok(r)
}

/// Deletes an object `file` had applied, unless it is gone or another file owns it now.
async fn delete_one(client: &kube::Client, file: &str, r: &ObjRef) -> anyhow::Result<()> {
    let (group, version) = match r.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", r.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &r.kind);
    let (api, _) = api_for(client, &gvk, r.namespace.as_deref()).await?;
    let Some(current) = api.get_opt(&r.name).await? else {
        return Ok(());
    };
    if current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
        != Some(&file.to_owned())
    {
        return Ok(());
    }
    match api.delete(&r.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("deleting {}: {e}", r.describe())),
    }
}

struct Deployer {
    client: kube::Client,
    dir: PathBuf,
    state_path: PathBuf,
    state: State,
    /// The content digest each file's errors were last logged for: once per change.
    warned: HashMap<String, String>,
}

impl Deployer {
    fn warn_once(&mut self, file: &str, hash: &str, errors: &[String]) {
        if self.warned.get(file).map(String::as_str) == Some(hash) {
            return;
        }
        self.warned.insert(file.to_owned(), hash.to_owned());
        for e in errors {
            tracing::warn!("manifest {file}: {e}");
        }
    }

    async fn pass(&mut self) {
        let (files, skips) = scan(&self.dir);
        let before = self.state.clone();
        for (file, path) in &files {
            if skipped(file, &skips) {
                continue;
            }
            self.sync_file(file, path).await;
        }
        // Files gone (and not skipped): delete what they applied.
        let gone: Vec<String> = self
            .state
            .keys()
            .filter(|f| !files.contains_key(*f) && !skipped(f, &skips))
            .cloned()
            .collect();
        for file in gone {
            let applied = self.state.get(&file).cloned().unwrap_or_default();
            let mut left = BTreeSet::new();
            let mut errors = Vec::new();
            for r in &applied.objects {
                if let Err(e) = delete_one(&self.client, &file, r).await {
                    errors.push(format!("{e:#}"));
                    left.insert(r.clone());
                }
            }
            if left.is_empty() {
                tracing::info!("manifest {file} removed: deleted its objects");
                self.state.remove(&file);
                self.warned.remove(&file);
            } else {
                self.warn_once(&file, "removed", &errors);
                self.state.insert(
                    file,
                    Applied {
                        hash: applied.hash,
                        objects: left,
                    },
                );
            }
        }
        if self.state != before
            && let Err(e) = save_state(&self.state_path, &self.state)
        {
            tracing::warn!("manifests: saving {}: {e}", self.state_path.display());
        }
    }

    async fn sync_file(&mut self, file: &str, path: &Path) {
        let content = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_FILE => Err(format!("larger than {MAX_FILE} bytes, ignored")),
            Ok(_) => std::fs::read(path).map_err(|e| format!("reading: {e}")),
            Err(e) => Err(format!("reading: {e}")),
        };
        let content = match content {
            Ok(c) => c,
            Err(e) => return self.warn_once(file, "unreadable", &[e]),
        };
        let hash = hex::encode(Sha256::digest(&content));
        let previous = self.state.get(file).cloned().unwrap_or_default();
        if previous.hash == hash {
            return;
        }
        let objects = match std::str::from_utf8(&content)
            .map_err(|_| anyhow::anyhow!("not UTF-8"))
            .and_then(parse)
        {
            Ok(o) => o,
            // Nothing is applied nor deleted for a file that does not parse.
            Err(e) => return self.warn_once(file, &hash, &[format!("{e:#}, ignored")]),
        };
        let mut errors = Vec::new();
        let mut applied = BTreeSet::new();
        // Still meant by the file, even if this apply failed: not to be deleted.
        let mut wanted = BTreeSet::new();
        for obj in objects {
            if let Ok((gvk, name)) = identity(&obj) {
                let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                for r in &previous.objects {
                    if r.api_version == gvk.api_version()
                        && r.kind == gvk.kind
                        && r.name == name
                        && (ns.is_none() || r.namespace.as_deref() == ns)
                    {
                        wanted.insert(r.clone());
                    }
                }
            }
            match apply_one(&self.client, file, obj).await {
                Ok(r) => {
                    applied.insert(r);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        let mut kept = BTreeSet::new();
        for r in previous.objects.difference(&applied) {
            if wanted.contains(r) {
                kept.insert(r.clone());
                continue;
            }
            if let Err(e) = delete_one(&self.client, file, r).await {
                errors.push(format!("{e:#}"));
                kept.insert(r.clone());
            }
        }
        let complete = errors.is_empty();
        let mut objects = applied;
        objects.extend(kept);
        if complete {
            tracing::info!("manifest {file}: applied {} object(s)", objects.len());
            self.warned.remove(file);
        } else {
            self.warn_once(file, &hash, &errors);
        }
        // An incomplete apply keeps no digest, so it is tried again at the next poll (a CRD
        // and its objects, a namespace being deleted), logged once.
        self.state.insert(
            file.to_owned(),
            Applied {
                hash: if complete { hash } else { String::new() },
                objects,
            },
        );
    }
}

/// Runs the manifests deployer of the server whose data directory is `data_dir`.
pub fn spawn(client: kube::Client, data_dir: &Path) {
    let server = data_dir.join("server");
    let dir = server.join("manifests");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!("manifests: creating {}: {e}", dir.display());
    }
    let state_path = server.join("manifests.state.json");
    let state = load_state(&state_path);
    let mut d = Deployer {
        client,
        dir,
        state_path,
        state,
        warned: HashMap::new(),
    };
    tokio::spawn(async move {
        loop {
            d.pass().await;
            tokio::time::sleep(POLL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_documents_lists_and_refuses_garbage() {
        let objs = parse(
            "---\napiVersion: v1\nkind: A\n---\n---\nkind: List\nitems: [{kind: B}, {kind: C}]\n",
        )
        .unwrap();
        let kinds: Vec<_> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["A", "B", "C"]);
        assert!(parse("a: [b\n").is_err());
        assert!(parse("- 1\n- 2\n").is_err());
        assert!(parse("kind: List\nitems: [1]\n").is_err());
    }

    #[test]
    fn skip_files_match_the_stem_or_the_name() {
        let skips: BTreeSet<String> = ["a".into(), "b.yml".into()].into();
        assert!(skipped("a.yaml", &skips));
        assert!(skipped("b.yml", &skips));
        assert!(!skipped("c.yaml", &skips));
    }

    #[test]
    fn state_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut state = State::new();
        state.insert(
            "f.yaml".into(),
            Applied {
                hash: "h".into(),
                objects: [ObjRef {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: Some("default".into()),
                    name: "x".into(),
                }]
                .into(),
            },
        );
        save_state(&path, &state).unwrap();
        assert_eq!(load_state(&path), state);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "{not json").unwrap();
        assert!(load_state(&path).is_empty());
    }
}
