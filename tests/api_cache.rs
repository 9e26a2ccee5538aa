//! The API server's watch cache through kubectl: lists right after writes include them
//! (read-your-writes from the cache), selectors and deletecollection.

mod common;

use common::Server;
use serde_json::Value;

fn names(s: &Server, args: &[&str]) -> Vec<String> {
    let mut all = vec!["get", "configmaps", "-o", "json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&s.ok(&all)).expect("JSON list");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn lists_read_their_writes_and_collections_are_deleted() {
    let s = Server::start();
    // Each create is followed at once by a list (a consistent read, served from the cache
    // once it has caught up with the store): the new object is always in it.
    for i in 0..25 {
        let name = format!("ryw-{i}");
        let label = if i % 2 == 0 {
            "parity=even"
        } else {
            "parity=odd"
        };
        s.ok(&["create", "configmap", &name, "--from-literal=k=v"]);
        s.ok(&["label", "configmap", &name, label]);
        let listed = names(&s, &["-l", label]);
        assert!(listed.contains(&name), "{name} missing from {listed:?}");
    }
    assert_eq!(names(&s, &["-l", "parity=even"]).len(), 13);
    assert_eq!(names(&s, &["-l", "parity=odd"]).len(), 12);
    // kubectl pages with limit=500; a small chunk size makes it follow continue tokens
    // (the first page from the cache, the rest from the store at the same revision).
    let paged = names(&s, &["-l", "parity", "--chunk-size=4"]);
    assert_eq!(paged.len(), 25, "{paged:?}");

    // A get at "any state" (resourceVersion=0) after an update sees the update.
    s.ok(&["label", "configmap", "ryw-0", "extra=yes"]);
    let got: Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps/ryw-0?resourceVersion=0",
    ]))
    .unwrap();
    assert_eq!(got["metadata"]["labels"]["extra"], "yes");

    // DeleteCollection (kubectl's own delete lists and deletes one by one) with a selector
    // deletes exactly the selected objects and answers with them.
    let deleted: Value = serde_json::from_str(&s.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps?labelSelector=parity%3Deven",
    ]))
    .unwrap();
    assert_eq!(deleted["kind"], "ConfigMapList");
    assert_eq!(deleted["items"].as_array().map(Vec::len), Some(13));
    assert!(names(&s, &["-l", "parity=even"]).is_empty());
    assert_eq!(names(&s, &["-l", "parity=odd"]).len(), 12);
}
