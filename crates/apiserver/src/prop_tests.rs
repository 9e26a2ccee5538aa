//! Property tests: arbitrary input to the request decoders, selectors and patch appliers
//! yields errors, never panics.

use proptest::prelude::*;
use serde_json::Value;

use super::merge::{Shape, strategic_merge};
use super::selectors::{FieldSelector, LabelSelector};

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z$/:{}\"]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("(\\$patch|\\$retainKeys|\\$setElementOrder/containers|\\$deleteFromPrimitiveList/finalizers|spec|containers|name|metadata|finalizers|[a-z]{1,4})", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn protobuf_decoder_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut framed = b"k8s\0".to_vec();
        framed.extend(&body);
        let _ = super::protobuf::decode(&framed);
        let _ = super::protobuf::decode(&body);
        // A well-formed envelope around an arbitrary Pod payload reaches the typed decoder.
        let mut envelope = b"k8s\0\x0a\x09\x0a\x02v1\x12\x03Pod\x12".to_vec();
        envelope.push(body.len().min(127) as u8);
        envelope.extend(&body[..body.len().min(127)]);
        let _ = super::protobuf::decode(&envelope);
    }

    #[test]
    fn json_and_yaml_decoders_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = super::context::decode_json(&body);
        let _ = super::context::decode_yaml(&body);
    }

    #[test]
    fn selectors_never_panic(s in "[a-z0-9=!,()<> ./_-]{0,40}") {
        let _ = LabelSelector::parse(&s);
        let _ = FieldSelector::parse(&s);
    }

    #[test]
    fn strategic_merge_never_panics(original in json_value(), patch in json_value()) {
        let _ = strategic_merge(&original, &patch, Shape::of_definition("io.k8s.api.core.v1.Pod"));
        let _ = strategic_merge(&original, &patch, Shape::none());
    }

    #[test]
    fn json_patch_and_merge_patch_never_panic(original in json_value(), patch in json_value()) {
        let mut doc = original.clone();
        if let Ok(ops) = serde_json::from_value::<json_patch::Patch>(patch.clone()) {
            let _ = json_patch::patch(&mut doc, &ops);
        }
        json_patch::merge(&mut doc, &patch);
    }

    #[test]
    fn label_selectors_match_what_they_parse(key in "[a-z]{1,8}", value in "[a-z0-9]{0,8}", other in "[a-z0-9]{1,8}") {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(key.clone(), value.clone());
        let eq = format!("{key}={value}");
        let exists = key.clone();
        let ne = format!("{key}!={other}");
        prop_assert!(LabelSelector::parse(&eq).unwrap().matches(&labels));
        prop_assert!(LabelSelector::parse(&exists).unwrap().matches(&labels));
        prop_assert_eq!(LabelSelector::parse(&ne).unwrap().matches(&labels), value != other);
    }
}
