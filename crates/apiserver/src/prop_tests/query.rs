//! Request lines: API paths, query strings and the selectors in them.

use proptest::prelude::*;

use super::{bounded, config};
use crate::request::{ApiPath, Query, parse_path};
use crate::selectors::{FieldSelector, LabelSelector};

/// Path segments: API words, names, and percent-encodings valid, truncated and misplaced,
/// next to multi-byte characters (a URI may carry raw UTF-8).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "api",
            "apis",
            "v1",
            "apps",
            "namespaces",
            "default",
            "pods",
            "watch",
            "status",
            "finalize",
            "scale",
            "proxy",
            "log",
            "exec",
            "..",
            ".",
            "%2F",
            "%2e%2e",
            "%",
            "%4",
            "%zz",
            "%e9",
            "%C3%A9",
            "%ff%fe",
            "%a\u{e9}",
            "%\u{e9}",
            "\u{e9}%41",
            "%+1",
            "%-1",
            "%%41",
        ])
        .prop_map(String::from),
        "[a-z0-9.-]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..9),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(segs, lead, trail)| {
            let mut p = segs.join("/");
            if lead {
                p.insert(0, '/');
            }
            if trail {
                p.push('/');
            }
            p
        })
}

fn query_string() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "sendInitialEvents",
            "dryRun",
            "fieldManager",
            "fieldValidation",
            "force",
        ])
        .prop_map(String::from),
        segment(),
    ];
    prop::collection::vec((key, segment(), 0u8..4), 0..8).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v, form)| match form {
                0 => k.clone(),
                1 => format!("{k}="),
                _ => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Selector text: the grammar's tokens in any order, with keys and values valid and not.
pub fn selector() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "app",
            "tier",
            "example.com/name",
            "a/b/c",
            "-x",
            "x-",
            "=",
            "==",
            "!=",
            "!",
            ",",
            " ",
            "in",
            "notin",
            " in ",
            " notin ",
            "(",
            ")",
            "(a,b)",
            "()",
            ">",
            "<",
            "5",
            "-9",
            "99999999999999999999",
            "metadata.name",
            "spec.nodeName",
            "\u{e9}",
            "\u{0}",
        ])
        .prop_map(String::from),
        "[a-z0-9._/-]{1,70}",
    ];
    prop::collection::vec(token, 0..16).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(config(512))]

    /// Every path parses (or is not an API path) without panicking; resource paths keep
    /// their decoded segments.
    #[test]
    fn paths_parse_or_are_not_api_paths(p in path()) {
        let len = p.len();
        let parsed = bounded(len, 64, move || parse_path(&p));
        if let Some(ApiPath::Resource(r)) = parsed {
            prop_assert!(!r.resource.is_empty());
        }
    }

    #[test]
    fn query_strings_parse(q in query_string()) {
        let len = q.len();
        let parsed = bounded(len, 64, move || {
            let q = Query::parse(Some(&q));
            (q.get("limit").map(String::from), q.all("labelSelector"), q.flag("watch"))
        });
        let _ = parsed;
    }

    #[test]
    fn selectors_parse_or_fail_cleanly(s in selector()) {
        let len = s.len();
        bounded(len, 64, move || {
            let _ = LabelSelector::parse(&s);
            let _ = FieldSelector::parse(&s);
        });
    }
}

/// A `%` before a multi-byte character is not an escape; decoding it must not split the
/// character (it panicked: `&s[i + 1..i + 3]` cut `é` in half).
#[test]
fn percent_before_multibyte_characters() {
    for raw in ["%a\u{e9}", "%\u{e9}", "x%\u{4e2d}y", "%\u{1f600}"] {
        let q = Query::parse(Some(&format!("labelSelector={raw}&{raw}=1")));
        assert_eq!(q.get("labelSelector"), Some(raw));
        let Some(ApiPath::Resource(r)) = parse_path(&format!("/api/v1/namespaces/{raw}/pods"))
        else {
            panic!("{raw}: not a resource path");
        };
        assert_eq!(r.namespace.as_deref(), Some(raw));
    }
    let q = Query::parse(Some("a=%41%e9%C3%A9%zz%4"));
    assert_eq!(q.get("a"), Some("A\u{fffd}\u{e9}%zz%4"));
}
