//! Resource quantities and pod requests, in milli-units.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A resource list in milli-units (cpu "100m" = 100, memory "1Ki" = 1_024_000).
pub type Resources = BTreeMap<String, i128>;

/// Parses a Kubernetes quantity into milli-units; None if malformed.
pub fn parse_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    // `1e3` is an exponent; `1E` (exa) and `1Ei` (exbi) are suffixes.
    let exp10: Option<i32> = suffix.strip_prefix(['e', 'E']).and_then(|e| e.parse().ok());
    let mantissa = num;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => 10f64.powi(exp10?),
    };
    let value: f64 = mantissa.parse().ok()?;
    let milli = value * factor * 1000.0;
    milli.is_finite().then(|| milli.ceil() as i128)
}

fn add_list(into: &mut Resources, list: Option<&BTreeMap<String, Quantity>>) {
    for (k, v) in list.into_iter().flatten() {
        if let Some(m) = parse_milli(&v.0) {
            *into.entry(k.clone()).or_insert(0) += m;
        }
    }
}

/// Effective requests of a pod: the larger of the sum over containers and the largest init
/// container, plus overhead, as the scheduler accounts them.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::new();
    };
    let mut sum = Resources::new();
    for c in &spec.containers {
        add_list(
            &mut sum,
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        );
    }
    for c in spec.init_containers.iter().flatten() {
        let mut one = Resources::new();
        add_list(
            &mut one,
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        );
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        for (k, v) in one {
            let e = sum.entry(k).or_insert(0);
            if sidecar {
                *e += v;
            } else {
                *e = (*e).max(v);
            }
        }
    }
    add_list(&mut sum, spec.overhead.as_ref());
    sum
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
}
