//! Secrets encrypted at rest (issue 22, `--secrets-encryption`): what the database file holds,
//! reading through the API, plaintext Secrets of before encryption still readable, restarts,
//! `kinglet secrets-encrypt status|rotate`, an undecryptable value answered with an
//! upstream-style internal error naming the key, and a data directory of the key layout before
//! upstream's (issue 23) moved at start, its sealed Secrets with it.

mod common;

use std::path::PathBuf;

use base64::Engine;
use common::{Server, kinglet_cli as kinglet, succeeded as ok};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const BEFORE_VALUE: &str = "plaintext-before-7f3a9c21";
const AFTER_VALUE: &str = "plaintext-after-0b9e4d55";
const KEY_PREFIX: &str = "/registry/secrets/default/";

fn db(s: &Server) -> PathBuf {
    s.data_dir().join("server/db/state.db")
}

/// The database's bytes (main file and write-ahead log).
fn db_bytes(s: &Server) -> Vec<u8> {
    let mut out = std::fs::read(db(s)).expect("state.db");
    out.extend(std::fs::read(db(s).with_extension("db-wal")).unwrap_or_default());
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The stored (raw) values of Secrets `names`, read from the datastore of the stopped server.
fn stored_values(s: &Server, names: &[&str]) -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = kinglet_store::Store::open(&db(s)).expect("open the datastore");
        let mut out = Vec::new();
        for n in names {
            let rec = store
                .get(&format!("{KEY_PREFIX}{n}"))
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("no Secret {n} stored"));
            out.push(rec.value.to_vec());
        }
        out
    })
}

fn secret_value(s: &Server, name: &str) -> String {
    let b64 = s.ok(&["get", "secret", name, "-o", "jsonpath={.data.password}"]);
    String::from_utf8(B64.decode(b64.trim()).expect("base64")).expect("utf-8")
}

/// The key name that encrypted a stored value (`k8s:enc:aesgcm:v1:<name>:...`).
fn key_name(stored: &[u8]) -> String {
    let rest = stored
        .strip_prefix(b"k8s:enc:aesgcm:v1:")
        .unwrap_or_else(|| {
            panic!(
                "not encrypted: {:?}",
                String::from_utf8_lossy(&stored[..40.min(stored.len())])
            )
        });
    let end = rest.iter().position(|b| *b == b':').expect("a key name");
    String::from_utf8(rest[..end].to_vec()).expect("utf-8")
}

/// The `password` of Secret `name` in the watch event its relabelling causes.
fn watched_change(s: &Server, name: &str) -> String {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let secrets: kube::Api<Secret> = kube::Api::namespaced(s.client().await, "default");
        let list = secrets.list(&Default::default()).await.expect("list");
        let rv = list.metadata.resource_version.expect("resourceVersion");
        let mut events = secrets
            .watch(&WatchParams::default().timeout(30), &rv)
            .await
            .expect("watch")
            .boxed();
        let patch = serde_json::json!({"metadata": {"labels": {"watched": "yes"}}});
        secrets
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        while let Some(ev) = events.next().await {
            if let WatchEvent::Modified(secret) = ev.expect("a watch event")
                && secret.metadata.name.as_deref() == Some(name)
            {
                let data = secret.data.expect("data");
                return String::from_utf8(data["password"].0.clone()).expect("utf-8");
            }
        }
        panic!("the watch ended without the change");
    })
}

#[test]
fn secrets_are_encrypted_at_rest_and_rotate_to_a_new_key() {
    let mut s = Server::start();
    let data = s.data_dir();
    // Before encryption: the database holds the Secret's value (base64, as the API stores
    // it), which shows the search below can find it.
    s.ok(&[
        "create",
        "secret",
        "generic",
        "before",
        &format!("--from-literal=password={BEFORE_VALUE}"),
    ]);
    s.stop(false);
    assert!(contains(&db_bytes(&s), &B64.encode(BEFORE_VALUE)));
    assert_eq!(
        ok(kinglet(&data, &["secrets-encrypt", "status"]), "status").trim(),
        "Encryption Status: Disabled"
    );

    // Turned on (through the config file the harness passes).
    std::fs::write(
        s.dir.path().join("config.yaml"),
        "secrets-encryption: true\n",
    )
    .expect("config");
    s.restart(false);
    let config_file = data.join("server/cred/encryption-config.json");
    let mode = std::fs::metadata(&config_file)
        .expect("key file")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).expect("read")).expect("JSON");
    assert_eq!(config["kind"], "EncryptionConfiguration");
    assert_eq!(config["resources"][0]["resources"][0], "secrets");
    let first_key = config["resources"][0]["providers"][0]["aesgcm"]["keys"][0]["name"]
        .as_str()
        .expect("an aesgcm key first")
        .to_string();
    assert_eq!(
        config["resources"][0]["providers"][1],
        serde_json::json!({"identity": {}})
    );
    let status = ok(kinglet(&data, &["secrets-encrypt", "status"]), "status");
    assert!(status.contains("Encryption Status: Enabled"), "{status}");
    assert!(status.contains(&first_key), "{status}");

    // The plaintext Secret of before still reads; a new one is encrypted.
    assert_eq!(secret_value(&s, "before"), BEFORE_VALUE);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "after",
        &format!("--from-literal=password={AFTER_VALUE}"),
    ]);
    assert_eq!(secret_value(&s, "after"), AFTER_VALUE);
    // Rewriting the old one encrypts it.
    s.ok(&["label", "secret", "before", "rewritten=yes"]);
    // Watches see plaintext too.
    assert_eq!(watched_change(&s, "after"), AFTER_VALUE);
    s.stop(false);
    let bytes = db_bytes(&s);
    assert!(!contains(&bytes, AFTER_VALUE));
    assert!(!contains(&bytes, &B64.encode(AFTER_VALUE)));
    let stored = stored_values(&s, &["before", "after"]);
    for v in &stored {
        assert_eq!(key_name(v), first_key);
        assert!(!contains(v, &B64.encode(BEFORE_VALUE)));
    }

    // Restart: readable. Rotation is refused while the server runs.
    s.restart(false);
    assert_eq!(secret_value(&s, "after"), AFTER_VALUE);
    let running = kinglet(&data, &["secrets-encrypt", "rotate"]);
    assert!(!running.status.success());
    assert!(String::from_utf8_lossy(&running.stderr).contains("stop the server"));
    s.stop(false);
    let out = ok(kinglet(&data, &["secrets-encrypt", "rotate"]), "rotate");
    assert!(out.contains("2 Secrets re-encrypted"), "{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).expect("read")).expect("JSON");
    let keys = config["resources"][0]["providers"][0]["aesgcm"]["keys"]
        .as_array()
        .expect("keys")
        .clone();
    assert_eq!(keys.len(), 1, "old keys are dropped: {config}");
    let new_key = keys[0]["name"].as_str().expect("name").to_string();
    assert_ne!(new_key, first_key);
    for v in stored_values(&s, &["before", "after"]) {
        assert_eq!(key_name(&v), new_key);
    }
    s.restart(false);
    assert_eq!(secret_value(&s, "before"), BEFORE_VALUE);
    assert_eq!(secret_value(&s, "after"), AFTER_VALUE);
    assert!(
        s.ok(&[
            "get",
            "secret",
            "before",
            "-o",
            "jsonpath={.metadata.labels.rewritten}"
        ])
        .contains("yes")
    );
}

#[test]
fn an_undecryptable_secret_is_an_internal_error_naming_the_key() {
    let mut s = Server::start_with(&["--secrets-encryption"]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "fine",
        "--from-literal=password=x",
    ]);
    s.stop(false);
    // A value written with a key the configuration does not have.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = kinglet_store::Store::open(&db(&s)).expect("open the datastore");
        let mut value = b"k8s:enc:aesgcm:v1:lost-key:".to_vec();
        value.extend([7u8; 40]);
        store
            .create(&format!("{KEY_PREFIX}broken"), value.into())
            .await
            .expect("create");
    });
    drop(rt);
    s.restart(false);
    let err = s.fails(&["get", "secret", "broken"], None);
    assert!(err.contains("Internal error"), "{err}");
    assert!(err.contains("lost-key"), "{err}");
    // The server is unharmed; other Secrets read.
    assert_eq!(
        s.ok(&["get", "secret", "fine", "-o", "name"]).trim(),
        "secret/fine"
    );
}

/// Puts every built-in object of the stopped server back at the key the releases before
/// upstream's key layout used (`/registry/<group or core>/<plural>/...`), Secrets sealed for
/// those keys, as such a release left its data directory; how many objects moved. Returns
/// the prefixes that moved too.
fn to_previous_layout(s: &Server) -> (usize, Vec<String>) {
    use kinglet_apiserver::encryption::{Config, SECRETS_PREFIX, config_path};
    use kinglet_apiserver::registry::builtins;
    let config = Config::load(&config_path(&s.data_dir()))
        .expect("encryption configuration")
        .expect("encryption is on");
    let resources: Vec<_> = builtins()
        .into_iter()
        .filter(|r| !r.computed && !r.create_only)
        .collect();
    let old_prefix = |r: &kinglet_apiserver::registry::Resource| {
        let group = if r.storage.0.is_empty() {
            "core"
        } else {
            &r.storage.0
        };
        format!("/registry/{group}/{}/", r.storage.1)
    };
    let moved_prefixes: Vec<String> = resources
        .iter()
        .map(old_prefix)
        .filter(|p| resources.iter().all(|r| r.prefix() != *p))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let moved = rt.block_on(async {
        let store = kinglet_store::Store::open(&db(s)).expect("open the datastore");
        let mut moved = 0;
        for rec in store
            .list("/registry/", 0, None, None)
            .await
            .expect("list")
            .items
        {
            let Some(res) = resources
                .iter()
                .filter(|r| rec.key.starts_with(&r.prefix()))
                .max_by_key(|r| r.prefix().len())
            else {
                continue;
            };
            let old = format!("{}{}", old_prefix(res), &rec.key[res.prefix().len()..]);
            if old == rec.key {
                continue;
            }
            let value = if rec.key.starts_with(SECRETS_PREFIX) {
                let plain = config.decrypt(&rec.key, &rec.value).expect("decrypt");
                config.encrypt(&old, &plain).expect("encrypt")
            } else {
                rec.value.clone()
            };
            store.create(&old, value).await.expect("create");
            store.delete(&rec.key, None).await.expect("delete");
            moved += 1;
        }
        moved
    });
    (moved, moved_prefixes)
}

#[test]
fn a_data_dir_of_the_previous_key_layout_comes_up_with_every_object() {
    // The move concerns SQLite data directories, the only datastore earlier releases had.
    let mut s = Server::start_with(&["--secrets-encryption", "--datastore-endpoint=sqlite://"]);
    s.ok(&["create", "namespace", "legacy"]);
    s.ok(&["create", "configmap", "settings", "--from-literal=k=v"]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        &format!("--from-literal=password={AFTER_VALUE}"),
    ]);
    let uids = |s: &Server| {
        [
            ("namespace", "legacy"),
            ("configmap", "settings"),
            ("secret", "creds"),
            ("service", "kubernetes"),
            ("clusterrole", "cluster-admin"),
        ]
        .map(|(kind, name)| s.ok(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"]))
    };
    let before = uids(&s);
    s.stop(false);
    let (moved, old_prefixes) = to_previous_layout(&s);
    assert!(moved >= before.len(), "only {moved} objects moved back");

    s.restart(false);
    // The same objects, not new ones made in their place.
    assert_eq!(uids(&s), before);
    assert_eq!(secret_value(&s, "creds"), AFTER_VALUE);
    s.stop(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Vec<String> = rt.block_on(async {
        let store = kinglet_store::Store::open(&db(&s)).expect("open the datastore");
        let page = store.list("/registry/", 0, None, None).await.expect("list");
        page.items.into_iter().map(|r| r.key).collect()
    });
    for k in [
        "/registry/namespaces/legacy",
        "/registry/configmaps/default/settings",
        "/registry/secrets/default/creds",
        "/registry/services/specs/default/kubernetes",
        "/registry/clusterroles/cluster-admin",
    ] {
        assert!(keys.iter().any(|key| key == k), "{k} missing: {keys:?}");
    }
    let left: Vec<&String> = keys
        .iter()
        .filter(|k| old_prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    assert!(left.is_empty(), "left at old keys: {left:?}");
}
