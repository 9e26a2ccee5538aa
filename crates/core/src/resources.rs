//! Resource quantities and pod requests, in milli-units.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A resource list in milli-units (cpu "100m" = 100, memory "1Ki" = 1_024_000).
pub type Resources = BTreeMap<String, i128>;

/// Parses a Kubernetes quantity into milli-units, exactly (integer arithmetic, never floats),
/// rounded up as upstream's `Quantity.MilliValue()` rounds: "700m" is 700, "2.007" is 2007,
/// "1500u" is 2. None if malformed or beyond i128.
///
/// The grammar is upstream's: `<sign><digits>[.<digits>]<suffix>` with a binary suffix
/// (Ki .. Ei), a decimal one (n u m "" k M G T P E) or a decimal exponent (`e3`, `E-2`).
pub fn parse_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let (negative, rest) = match q.as_bytes().first()? {
        b'-' => (true, &q[1..]),
        b'+' => (false, &q[1..]),
        _ => (false, q),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return None;
    }
    // The digits as one integer, and the power of ten the fraction takes away.
    let digits = whole
        .bytes()
        .chain(fraction.bytes())
        .try_fold(0i128, |acc, d| {
            acc.checked_mul(10)?.checked_add(i128::from(d - b'0'))
        })?;
    let (binary, exp10) = suffix_factor(suffix)?;
    // milli = digits * binary * 10^(exp10 + 3 - fraction digits), rounded up.
    let exp = exp10 + 3 - i32::try_from(fraction.len()).ok()?;
    let mut numerator = digits.checked_mul(binary)?;
    if negative {
        numerator = -numerator;
    }
    if exp >= 0 {
        return numerator.checked_mul(pow10(exp)?);
    }
    let Some(divisor) = pow10(-exp) else {
        // Smaller than 10^-38 of a milli-unit: zero, or one milli-unit once rounded up.
        return Some(i128::from(numerator > 0));
    };
    let quotient = numerator.div_euclid(divisor);
    Some(quotient + i128::from(numerator.rem_euclid(divisor) != 0))
}

/// A suffix's binary factor and decimal exponent.
fn suffix_factor(suffix: &str) -> Option<(i128, i32)> {
    let binary = |power: u32| Some((1024i128.pow(power), 0));
    match suffix {
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => Some((1, -9)),
        "u" => Some((1, -6)),
        "m" => Some((1, -3)),
        "" => Some((1, 0)),
        "k" => Some((1, 3)),
        "M" => Some((1, 6)),
        "G" => Some((1, 9)),
        "T" => Some((1, 12)),
        "P" => Some((1, 15)),
        "E" => Some((1, 18)),
        // `1e3`, `1E-2`: a decimal exponent (`E` alone is exa, above).
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((1, exp.parse().ok()?))
        }
    }
}

fn pow10(exp: i32) -> Option<i128> {
    10i128.checked_pow(u32::try_from(exp).ok()?)
}

fn add_list(into: &mut Resources, list: Option<&BTreeMap<String, Quantity>>) {
    for (k, v) in list.into_iter().flatten() {
        if let Some(m) = parse_milli(&v.0) {
            *into.entry(k.clone()).or_insert(0) += m;
        }
    }
}

/// Effective requests of a pod, as upstream's `PodRequests` counts them: the containers plus
/// the sidecars (init containers with `restartPolicy: Always`, which keep running), or, if
/// larger, what an init container needs while it runs (its own requests plus the sidecars
/// started before it); plus the pod's overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::new();
    };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        let mut r = Resources::new();
        add_list(
            &mut r,
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        );
        r
    };
    let mut sum = Resources::new();
    for c in &spec.containers {
        add(&mut sum, &requests(c));
    }
    let (mut sidecars, mut init_peak) = (Resources::new(), Resources::new());
    for c in spec.init_containers.iter().flatten() {
        let own = requests(c);
        let running = if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sum, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut with_sidecars = own;
            add(&mut with_sidecars, &sidecars);
            with_sidecars
        };
        for (k, v) in running {
            let peak = init_peak.entry(k).or_insert(0);
            *peak = (*peak).max(v);
        }
    }
    for (k, v) in init_peak {
        let e = sum.entry(k).or_insert(0);
        *e = (*e).max(v);
    }
    add_list(&mut sum, spec.overhead.as_ref());
    sum
}

fn add(into: &mut Resources, more: &Resources) {
    for (k, v) in more {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

/// Allocatable resources of a node, in milli-units.
pub fn allocatable(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    let mut r = Resources::new();
    add_list(&mut r, list);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1Ki"), Some(1_024_000));
        assert_eq!(parse_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        // metrics.k8s.io writes CPU in nanocores.
        assert_eq!(parse_milli("250000000n"), Some(250));
        assert_eq!(parse_milli("1500u"), Some(2));
        assert_eq!(parse_milli("1Ei"), Some(1_152_921_504_606_846_976_000));
        assert_eq!(parse_milli("2E"), Some(2_000_000_000_000_000_000_000));
        assert_eq!(parse_milli("12Qi"), None);
        assert_eq!(parse_milli("abc"), None);
    }

    #[test]
    fn pod_requests_count_sidecars_as_upstream() {
        let pod = |init: serde_json::Value, containers: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "spec": {"initContainers": init, "containers": containers}
            }))
            .unwrap()
        };
        let c =
            |cpu: &str| serde_json::json!({"name": "c", "resources": {"requests": {"cpu": cpu}}});
        let sidecar = |cpu: &str| serde_json::json!({"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": cpu}}});
        let cases = [
            (
                "containers add up",
                serde_json::json!([]),
                serde_json::json!([c("1"), c("2")]),
                3000,
            ),
            (
                "init above the containers",
                serde_json::json!([c("5")]),
                serde_json::json!([c("1")]),
                5000,
            ),
            (
                "init below the containers",
                serde_json::json!([c("2")]),
                serde_json::json!([c("3")]),
                3000,
            ),
            (
                "a sidecar adds to the containers",
                serde_json::json!([sidecar("1")]),
                serde_json::json!([c("3")]),
                4000,
            ),
            // The init container runs beside the sidecar started before it: 1 + 3.
            (
                "init after a sidecar",
                serde_json::json!([sidecar("1"), c("3")]),
                serde_json::json!([c("500m")]),
                4000,
            ),
            // Started before the sidecar, it runs alone: max(3, 1 + 0.5).
            (
                "init before a sidecar",
                serde_json::json!([c("3"), sidecar("1")]),
                serde_json::json!([c("500m")]),
                3000,
            ),
        ];
        for (name, init, containers, want) in cases {
            let got = pod_requests(&pod(init, containers)).get("cpu").copied();
            assert_eq!(got, Some(want), "{name}");
        }
    }

    /// Values that floating point got wrong (700m was 701, 9m was 10, 2.007 was 2008).
    #[test]
    fn quantities_are_exact() {
        let cases = [
            ("700m", 700),
            ("9m", 9),
            ("2.007", 2007),
            ("0.1", 100),
            ("1.1Ki", 1_126_400),
            ("0.3Gi", 322_122_547_200),
            ("100e-3", 100),
            ("1E-3", 1),
            ("1e+2", 100_000),
            ("+5m", 5),
            ("-5m", -5),
            ("-1500u", -1),
            (".5", 500),
            ("5.", 5000),
            ("1n", 1),
            ("0.0000001", 1),
            ("0", 0),
            ("0Ki", 0),
            ("1e-50", 1),
            ("0e-50", 0),
            ("123456789123456789", 123_456_789_123_456_789_000),
        ];
        for (q, want) in cases {
            assert_eq!(parse_milli(q), Some(want), "{q}");
        }
        for bad in [
            "",
            "-",
            ".",
            "1..2",
            "1.2.3",
            "m",
            "1 m",
            "1e",
            "1e+",
            "1ee3",
            "1K",
            "1mi",
            "--1",
            "1e3.5",
            "1e99999999999",
        ] {
            assert_eq!(parse_milli(bad), None, "{bad:?}");
        }
        assert_eq!(parse_milli("1e40"), None, "beyond i128");
    }

    /// A decimal string of `milli` / 1000 with `places` fraction digits (0 to 3).
    fn decimal(milli: i64, places: usize) -> String {
        let sign = if milli < 0 { "-" } else { "" };
        let (whole, frac) = (milli.unsigned_abs() / 1000, milli.unsigned_abs() % 1000);
        let frac = format!("{frac:03}");
        match places {
            0 => format!("{sign}{whole}"),
            _ => format!("{sign}{whole}.{}", &frac[..places]),
        }
    }

    proptest! {
        /// Every spelling upstream accepts for one value parses to that value: milli-units,
        /// plain decimals, exponents, and the SI and binary suffixes of whole multiples.
        #[test]
        fn every_form_of_a_value_parses_to_it(milli in -10_000_000_000i64..10_000_000_000) {
            let want = i128::from(milli);
            prop_assert_eq!(parse_milli(&format!("{milli}m")), Some(want));
            prop_assert_eq!(parse_milli(&decimal(milli, 3)), Some(want));
            prop_assert_eq!(parse_milli(&format!("{milli}e-3")), Some(want));
            prop_assert_eq!(parse_milli(&format!("{}u", i128::from(milli) * 1000)), Some(want));
            prop_assert_eq!(parse_milli(&format!("{}n", i128::from(milli) * 1_000_000)), Some(want));
            if milli % 1000 == 0 {
                prop_assert_eq!(parse_milli(&decimal(milli, 0)), Some(want));
            }
            if milli % 1_000_000 == 0 {
                prop_assert_eq!(parse_milli(&format!("{}k", milli / 1_000_000)), Some(want));
                prop_assert_eq!(parse_milli(&format!("{}e3", milli / 1_000_000)), Some(want));
            }
        }

        /// Binary suffixes are exact multiples of 1024, fractions included ("1.5Ki" = 1536).
        #[test]
        fn binary_suffixes_are_exact(n in 0i64..1_000_000, tenths in 0u8..10, power in 1u32..6) {
            let suffix = ["Ki", "Mi", "Gi", "Ti", "Pi"][power as usize - 1];
            let base = 1024i128.pow(power);
            let want = (i128::from(n) * 10 + i128::from(tenths)) * base * 100;
            prop_assert_eq!(parse_milli(&format!("{n}.{tenths}{suffix}")), Some(want));
        }

        /// Sub-milli amounts round up to the next milli-unit, as `MilliValue()` does.
        #[test]
        fn sub_milli_rounds_up(nanos in 0i64..1_000_000_000_000) {
            let want = (i128::from(nanos) + 999_999) / 1_000_000;
            prop_assert_eq!(parse_milli(&format!("{nanos}n")), Some(want));
        }

        /// No input panics, and none parses to a value without a digit in it.
        #[test]
        fn any_input_is_refused_or_parsed(s in "[-+0-9.eEkKMGTPinum ]{0,24}") {
            if let Some(v) = parse_milli(&s) {
                prop_assert!(s.bytes().any(|b| b.is_ascii_digit()), "{} -> {}", s, v);
            }
        }
    }
}
