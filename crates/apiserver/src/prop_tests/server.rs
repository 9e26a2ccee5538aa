//! Whole requests through the server's router (in-process, as the admin): hostile paths,
//! query parameters (selectors, limit, continue tokens, resourceVersion, watch options) and
//! bodies reach the decoders the way a client's do. Every answer must be a status the client
//! can act on, in bounded time, and the server must keep serving.

use std::sync::Arc;

use axum::body::Body;
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use super::generators::{alias_bomb, deep_json, json_object, mutate, mutation};
use super::query::selector;
use super::{TIME_LIMIT, config};
use crate::Api;
use crate::PeerUser;
use crate::auth::UserInfo;

/// A continue token around `raw` (the server's are base64 of JSON).
fn token(raw: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Values for the list and watch parameters: valid, edge and invalid.
fn param() -> impl Strategy<Value = (String, String)> {
    let limit = prop::sample::select(vec![
        "",
        "0",
        "1",
        "2",
        "-1",
        "500",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "99999999999999999999",
        "1e3",
        "abc",
    ]);
    let rv = prop::sample::select(vec![
        "",
        "0",
        "1",
        "-1",
        "5",
        "9223372036854775807",
        "-9223372036854775808",
        "1e3",
        "abc",
        " 1",
    ]);
    let rvm = prop::sample::select(vec!["", "Exact", "NotOlderThan", "Bogus"]);
    let cont = prop_oneof![
        prop::sample::select(vec![
            r#"{"v":"meta.k8s.io/v1","rv":1,"start":"c"}"#,
            r#"{"v":"meta.k8s.io/v1","rv":-1,"start":"c"}"#,
            r#"{"v":"meta.k8s.io/v1","rv":9223372036854775807,"start":""}"#,
            r#"{"v":"meta.k8s.io/v1","rv":1,"start":"../../secrets/x"}"#,
            r#"{"v":"meta.k8s.io/v1","rv":1,"start":"/x"}"#,
            r#"{"rv":"1","start":1}"#,
            r#"[1,2]"#,
            r#"{"rv":1e400}"#,
        ])
        .prop_map(token),
        prop::sample::select(vec!["", "!!!", "e30", "eyJydiI6MX0=", "%ff"]).prop_map(String::from),
    ];
    let timeout = prop::sample::select(vec!["", "0", "1", "18446744073709551615", "-5", "x"]);
    prop_oneof![
        limit.prop_map(|v| ("limit".to_string(), v.to_string())),
        rv.prop_map(|v| ("resourceVersion".to_string(), v.to_string())),
        rvm.prop_map(|v| ("resourceVersionMatch".to_string(), v.to_string())),
        cont.prop_map(|v| ("continue".to_string(), v)),
        timeout.prop_map(|v| ("timeoutSeconds".to_string(), v.to_string())),
        selector().prop_map(|v| ("labelSelector".to_string(), v)),
        selector().prop_map(|v| ("fieldSelector".to_string(), v)),
        prop::sample::select(vec![
            "sendInitialEvents",
            "allowWatchBookmarks",
            "dryRun",
            "fieldValidation",
            "fieldManager",
            "force",
            "propagationPolicy",
            "gracePeriodSeconds"
        ])
        .prop_flat_map(|k| prop::sample::select(vec![
            "",
            "true",
            "false",
            "All",
            "Strict",
            "Warn",
            "x",
            "-1",
            "99999999999999999999"
        ])
        .prop_map(move |v| (k.to_string(), v.to_string()))),
    ]
}

/// Percent-encodes a query value (the server decodes it back).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    query: Vec<(String, String)>,
    content_type: &'static str,
    body: Vec<u8>,
}

fn body_for(content_type: &'static str) -> BoxedStrategy<Vec<u8>> {
    let json_doc = (json_object(), prop::collection::vec(mutation(), 0..3)).prop_map(|(v, m)| {
        let mut v = v;
        v["metadata"]["name"] = json!("c");
        mutate(serde_json::to_vec(&v).unwrap_or_default(), &m)
    });
    match content_type {
        "application/yaml" | "application/apply-patch+yaml" => prop_oneof![
            (json_object(), prop::collection::vec(mutation(), 0..3)).prop_map(|(mut v, m)| {
                v["metadata"]["name"] = json!("c");
                mutate(serde_yaml::to_string(&v).unwrap_or_default().into_bytes(), &m)
            }),
            (1usize..10, 1usize..10).prop_map(|(l, w)| alias_bomb(l, w, "x")),
        ]
        .boxed(),
        "application/json-patch+json" => prop_oneof![
            Just(br#"[{"op":"add","path":"/metadata/labels/x","value":"y"}]"#.to_vec()),
            Just(br#"[{"op":"copy","from":"","path":"/a"},{"op":"copy","from":"","path":"/b"}]"#.to_vec()),
            Just(br#"[{"op":"test","path":"/metadata/name","value":"nope"}]"#.to_vec()),
            Just(br#"{"op":"remove"}"#.to_vec()),
            json_doc,
        ]
        .boxed(),
        "application/vnd.kubernetes.protobuf" => prop::collection::vec(any::<u8>(), 0..128)
            .prop_map(|b| [b"k8s\0\x0a\x09\x0a\x02v1\x12\x03Pod\x12".as_slice(), &[b.len() as u8], &b].concat())
            .boxed(),
        _ => prop_oneof![4 => json_doc, 1 => (100usize..300, 0u8..3).prop_map(|(d, s)| deep_json(d, s))].boxed(),
    }
}

fn request() -> impl Strategy<Value = Req> {
    let resource = prop::sample::select(vec![
        "/api/v1/namespaces/default/configmaps",
        "/api/v1/namespaces/default/configmaps/c",
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/pods/p/status",
        "/apis/apps/v1/namespaces/default/deployments",
        "/apis/apps/v1/namespaces/default/deployments/d/scale",
        "/api/v1/namespaces",
        "/api/v1/nodes",
        "/api/v1/watch/namespaces/default/configmaps",
        "/api/v1/namespaces/%ZZ/configmaps/%a\u{e9}",
        "/apis/example.com/v1/things",
        "/api/v1/namespaces/default/configmaps/c/bogus/extra",
    ]);
    let method = prop::sample::select(vec!["GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE"]);
    (
        method,
        resource,
        prop::collection::vec(param(), 0..5),
        any::<bool>(),
    )
        .prop_flat_map(|(method, path, query, watch)| {
            let cts: Vec<&'static str> = match method {
                "PATCH" => vec![
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                    "application/apply-patch+yaml",
                    "text/plain",
                ],
                "POST" | "PUT" => vec![
                    "application/json",
                    "application/yaml",
                    "application/vnd.kubernetes.protobuf",
                    "",
                ],
                _ => vec![""],
            };
            let mut query = query;
            if watch && method == "GET" {
                query.push(("watch".into(), "true".into()));
            }
            prop::sample::select(cts).prop_flat_map(move |ct| {
                let (path, query) = (path.to_string(), query.clone());
                body_for(ct).prop_map(move |body| Req {
                    method,
                    path: path.clone(),
                    query: query.clone(),
                    content_type: ct,
                    body,
                })
            })
        })
}

async fn send(api: &Arc<Api>, r: &Req) -> Option<u16> {
    let q: Vec<String> = r
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let uri = if q.is_empty() {
        r.path.clone()
    } else {
        format!("{}?{}", r.path, q.join("&"))
    };
    let req = http::Request::builder()
        .method(r.method)
        .uri(&uri)
        .header(http::header::CONTENT_TYPE, r.content_type)
        .extension(PeerUser(Some(Arc::new(UserInfo::internal()))))
        .body(Body::from(r.body.clone()))
        .ok()?; // Not a URI hyper would accept: never reaches the server.
    let resp = tokio::time::timeout(
        TIME_LIMIT * 5,
        tower::ServiceExt::oneshot(api.router(), req),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to {} {uri}", r.method))
    .unwrap_or_else(|e| match e {});
    Some(resp.status().as_u16())
}

/// A runtime and an API server over a fresh store in `dir`.
fn fresh_api(dir: &std::path::Path) -> (tokio::runtime::Runtime, std::sync::Arc<crate::Api>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(crate::test_api(dir));
    (rt, api)
}

/// Hostile requests get 2xx or 4xx (504 is upstream's answer to a too new resourceVersion),
/// never a 500, within the time limit, and the server answers a plain list afterwards.
#[test]
fn hostile_requests_get_client_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, api) = fresh_api(dir.path());
    let seed = |r: Req| rt.block_on(send(&api, &r));
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let list = Req {
        method: "GET",
        path: "/api/v1/namespaces/default/configmaps".into(),
        query: vec![],
        content_type: "",
        body: vec![],
    };
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}]}]}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let creates = [
        ("/api/v1/namespaces/default/configmaps", cm),
        ("/api/v1/namespaces/default/pods", pod),
        ("/apis/apps/v1/namespaces/default/deployments", deployment),
    ]
    .map(|(path, obj)| Req {
        method: "POST",
        path: path.into(),
        content_type: "application/json",
        body: obj.to_string().into_bytes(),
        ..list.clone()
    });
    let mut runner = TestRunner::new(config(384));
    let result = runner.run(&request(), |r| {
        // Recreated each time (a 409 when still there), so named requests find them.
        for c in &creates {
            seed(c.clone());
        }
        let started = std::time::Instant::now();
        let status = seed(r.clone());
        let elapsed = started.elapsed();
        if let Some(code) = status {
            prop_assert!(
                (200..500).contains(&code) || code == 504,
                "{code} for {:?}",
                r
            );
        }
        prop_assert!(elapsed < TIME_LIMIT, "{:?} for {:?}", elapsed, r);
        prop_assert_eq!(seed(list.clone()), Some(200));
        Ok(())
    });
    rt.shutdown_background();
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The list parameters one by one: a continue token from the server pages on, forged ones are
/// a 400; huge limits are no limit; raw UTF-8 after `%` is no escape.
#[test]
fn list_parameters_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, api) = fresh_api(dir.path());
    let get = |query: Vec<(&str, String)>| {
        let r = Req {
            method: "GET",
            path: "/api/v1/namespaces/default/configmaps".into(),
            query: query.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            content_type: "",
            body: vec![],
        };
        rt.block_on(async {
            let q: Vec<String> = r
                .query
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            let req = http::Request::get(format!("{}?{}", r.path, q.join("&")))
                .extension(PeerUser(Some(Arc::new(UserInfo::internal()))))
                .body(Body::empty())
                .unwrap();
            let resp = tower::ServiceExt::oneshot(api.router(), req)
                .await
                .unwrap_or_else(|e| match e {});
            let code = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                code,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        })
    };
    for i in 0..3 {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}});
        let req = http::Request::post("/api/v1/namespaces/default/configmaps")
            .header(http::header::CONTENT_TYPE, "application/json")
            .extension(PeerUser(Some(Arc::new(UserInfo::internal()))))
            .body(Body::from(cm.to_string()))
            .unwrap();
        let resp = rt
            .block_on(tower::ServiceExt::oneshot(api.router(), req))
            .unwrap_or_else(|e| match e {});
        assert_eq!(resp.status(), 201);
    }
    let (code, page) = get(vec![("limit", "2".into())]);
    assert_eq!(code, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let next = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    let (code, rest) = get(vec![("limit", "2".into()), ("continue", next)]);
    assert_eq!(
        (code, rest["items"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    for limit in ["9223372036854775807", "18446744073709551615", "-1", "x"] {
        let (code, _) = get(vec![("limit", limit.into())]);
        assert!(code == 200 || code == 400, "limit={limit}: {code}");
    }
    for raw in [
        r#"{"rv":1,"start":"../x"}"#,
        r#"{"rv":"1"}"#,
        "[]",
        "{",
        "\u{ff}",
    ] {
        let (code, _) = get(vec![("continue", token(raw))]);
        assert_eq!(code, 400, "{raw}");
    }
    // A revision before the first, or long compacted: a list or 410 Expired, no crash.
    for raw in [r#"{"rv":-5,"start":"c0"}"#, r#"{"rv":1,"start":"c0"}"#] {
        let (code, _) = get(vec![("continue", token(raw))]);
        assert!(matches!(code, 200 | 410), "{raw}: {code}");
    }
    // A `%` before raw UTF-8 in the path or query (hyper passes such bytes on) is no escape;
    // decoding it panicked, before authentication.
    let req = http::Request::get("/api/v1/namespaces/%a\u{e9}/configmaps?labelSelector=%a\u{e9}")
        .extension(PeerUser(Some(Arc::new(UserInfo::internal()))))
        .body(Body::empty())
        .unwrap();
    let resp = rt
        .block_on(tower::ServiceExt::oneshot(api.router(), req))
        .unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), 400, "an invalid label selector");
    rt.shutdown_background();
}
