//! Fuzzing of the label and field selector parsers (`?labelSelector=`, `?fieldSelector=`,
//! `matchLabels`/`matchExpressions`): hostile text parses or fails cleanly and fast, and
//! well-formed selectors parse to what they say and match as upstream's semantics.
//! `PROPTEST_CASES=<n>` runs longer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kinglet_core::selectors::{FieldSelector, LabelSelector, Requirement};
use proptest::prelude::*;
use serde_json::{Value, json};

const TIME_LIMIT: Duration = Duration::from_secs(2);

fn config(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Label keys: a name, optionally with a DNS subdomain prefix.
fn key() -> impl Strategy<Value = String> {
    (
        prop::option::of("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,6}){0,2}"),
        "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,20}[a-zA-Z0-9])?",
    )
        .prop_map(|(p, n)| match p {
            Some(p) => format!("{p}/{n}"),
            None => n,
        })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,20}[a-zA-Z0-9])?",
    ]
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let values = || prop::collection::vec(value(), 1..4);
    prop_oneof![
        (key(), value()).prop_map(|(k, v)| Requirement::Equals(k, v)),
        (key(), value()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
        (key(), values()).prop_map(|(k, v)| Requirement::In(k, v)),
        (key(), values()).prop_map(|(k, v)| Requirement::NotIn(k, v)),
        key().prop_map(Requirement::Exists),
        key().prop_map(Requirement::NotExists),
        (key(), any::<i64>()).prop_map(|(k, n)| Requirement::Gt(k, n)),
        (key(), any::<i64>()).prop_map(|(k, n)| Requirement::Lt(k, n)),
    ]
}

/// Upstream's text for a requirement, with the spacing it allows.
fn render(r: &Requirement, spaced: bool, double: bool) -> String {
    let sp = if spaced { " " } else { "" };
    match r {
        Requirement::Equals(k, v) => format!("{k}{sp}{}{sp}{v}", if double { "==" } else { "=" }),
        Requirement::NotEquals(k, v) => format!("{k}{sp}!={sp}{v}"),
        Requirement::In(k, vs) => format!("{k} in{sp}({})", vs.join(&format!(",{sp}"))),
        Requirement::NotIn(k, vs) => format!("{k} notin{sp}({})", vs.join(&format!(",{sp}"))),
        Requirement::Exists(k) => k.clone(),
        Requirement::NotExists(k) => format!("!{sp}{k}"),
        Requirement::Gt(k, n) => format!("{k}{sp}>{sp}{n}"),
        Requirement::Lt(k, n) => format!("{k}{sp}<{sp}{n}"),
    }
}

/// The meaning of a requirement, written out independently of the parser's matcher.
fn holds(r: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    let num = |k: &str| labels.get(k).and_then(|v| v.parse::<i64>().ok());
    match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::In(k, vs) => vs.iter().any(|v| labels.get(k) == Some(v)),
        Requirement::NotIn(k, vs) => !vs.iter().any(|v| labels.get(k) == Some(v)),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::NotExists(k) => !labels.contains_key(k),
        Requirement::Gt(k, n) => num(k).is_some_and(|l| l > *n),
        Requirement::Lt(k, n) => num(k).is_some_and(|l| l < *n),
    }
}

fn key_of(r: &Requirement) -> &str {
    match r {
        Requirement::Equals(k, _)
        | Requirement::NotEquals(k, _)
        | Requirement::In(k, _)
        | Requirement::NotIn(k, _)
        | Requirement::Exists(k)
        | Requirement::NotExists(k)
        | Requirement::Gt(k, _)
        | Requirement::Lt(k, _) => k,
    }
}

/// Selector text from the grammar's tokens in any order, and arbitrary text.
fn hostile() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "app",
            "example.com/app",
            "a/b/c",
            "/",
            "-x",
            "x-",
            "_",
            ".",
            "=",
            "==",
            "!=",
            "!",
            "!!",
            ",",
            ",,",
            " ",
            "\t",
            "in",
            "notin",
            " in ",
            " notin ",
            "(",
            ")",
            "((",
            "))",
            "(a,b)",
            "()",
            "(,)",
            ">",
            "<",
            ">=",
            "5",
            "-9",
            "99999999999999999999",
            "metadata.name",
            "\u{e9}",
            "\u{0}",
            "\u{202e}",
            "\u{1f600}",
        ])
        .prop_map(String::from),
        "[a-z0-9._/-]{1,80}",
        any::<String>(),
    ];
    prop::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

fn timed<T>(f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    assert!(
        started.elapsed() < TIME_LIMIT,
        "took {:?}",
        started.elapsed()
    );
    out
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn hostile_selectors_parse_or_fail_cleanly(s in hostile()) {
        let label = timed(|| LabelSelector::parse(&s));
        let field = timed(|| FieldSelector::parse(&s));
        // Whatever parsed can be evaluated.
        if let Ok(l) = label {
            let _ = l.matches(&BTreeMap::from([("app".to_string(), "5".to_string())]));
        }
        if let Ok(f) = field {
            let _ = f.matches(|_| Some("x".to_string()));
        }
    }

    /// A well-formed selector parses to the requirements it was written from.
    #[test]
    fn well_formed_label_selectors_parse_to_their_requirements(
        reqs in prop::collection::vec(requirement(), 1..6),
        spaced in any::<bool>(),
        double in any::<bool>(),
    ) {
        let text = reqs.iter().map(|r| render(r, spaced, double)).collect::<Vec<_>>().join(if spaced { ", " } else { "," });
        let parsed = timed(|| LabelSelector::parse(&text));
        prop_assert_eq!(parsed.map(|s| s.requirements), Ok(reqs), "{}", text);
    }

    /// Matching is the conjunction of each requirement's meaning.
    #[test]
    fn label_selectors_match_as_their_requirements_say(
        reqs in prop::collection::vec(requirement(), 0..6),
        extra in prop::collection::btree_map(key(), value(), 0..4),
        reuse in prop::collection::vec((any::<prop::sample::Index>(), prop_oneof![value(), any::<i64>().prop_map(|n| n.to_string())]), 0..4),
    ) {
        // Labels that share the requirements' keys, so they can match.
        let mut labels = extra;
        for (i, v) in reuse {
            if !reqs.is_empty() {
                labels.insert(key_of(&reqs[i.index(reqs.len())]).to_string(), v);
            }
        }
        let sel = LabelSelector { requirements: reqs.clone() };
        prop_assert_eq!(sel.matches(&labels), reqs.iter().all(|r| holds(r, &labels)));
        let obj = json!({"metadata": {"labels": labels}});
        prop_assert_eq!(sel.matches_object(&obj), reqs.iter().all(|r| holds(r, &labels)));
    }

    /// `metav1.LabelSelector` objects of any shape build a selector or fail cleanly.
    #[test]
    fn label_selector_objects_build_or_fail_cleanly(
        match_labels in prop::collection::btree_map(key(), prop_oneof![value().prop_map(Value::from), Just(Value::Null), any::<i64>().prop_map(Value::from)], 0..4),
        exprs in prop::collection::vec((key(), prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Gt", "", "in"]), prop::collection::vec(value(), 0..3)), 0..4),
        shape in 0u8..4,
    ) {
        let exprs: Vec<Value> = exprs.into_iter().map(|(k, op, vs)| json!({"key": k, "operator": op, "values": vs})).collect();
        let obj = match shape {
            0 => json!({"matchLabels": match_labels, "matchExpressions": exprs}),
            1 => json!({"matchLabels": exprs, "matchExpressions": match_labels}),
            2 => json!([match_labels]),
            _ => json!({"matchExpressions": [1, "x", null, {"operator": "Exists"}]}),
        };
        if let Ok(sel) = timed(|| LabelSelector::from_object(&obj)) {
            let _ = sel.matches(&BTreeMap::new());
        }
    }

    /// Field selectors: terms with `=`, `==` and `!=` parse to themselves and match by value.
    #[test]
    fn field_selectors_parse_to_their_terms(
        terms in prop::collection::vec(("[a-z]{1,8}(\\.[a-zA-Z]{1,8}){0,2}", 0u8..3, "[a-z0-9.-]{0,12}"), 1..5),
        actual in "[a-z0-9.-]{0,12}",
    ) {
        let text = terms.iter().map(|(f, op, v)| format!("{f}{}{v}", ["=", "==", "!="][*op as usize])).collect::<Vec<_>>().join(",");
        let parsed = timed(|| FieldSelector::parse(&text)).unwrap();
        let want: Vec<(String, bool, String)> = terms.iter().map(|(f, op, v)| (f.clone(), *op != 2, v.clone())).collect();
        prop_assert_eq!(&parsed.terms, &want);
        let matched = parsed.matches(|_| Some(actual.clone()));
        prop_assert_eq!(matched, want.iter().all(|(_, eq, v)| (*v == actual) == *eq));
    }
}

/// Long selectors (a query string can carry megabytes) parse in linear time.
#[test]
fn long_selectors_parse_in_bounded_time() {
    let n = 50_000;
    let label: String = (0..n)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        timed(|| LabelSelector::parse(&label))
            .unwrap()
            .requirements
            .len(),
        n
    );
    let set = format!(
        "k in ({})",
        (0..n)
            .map(|i| format!("v{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(timed(|| LabelSelector::parse(&set)).is_ok());
    let parens = "(".repeat(n) + &")".repeat(n);
    assert!(timed(|| LabelSelector::parse(&parens)).is_err());
    let field: String = (0..n)
        .map(|i| format!("f{i}!=v"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        timed(|| FieldSelector::parse(&field)).unwrap().terms.len(),
        n
    );
}
