//! Which labels a node may put on its own Node object: its own kubelet labels, and anything
//! outside the `kubernetes.io` and `k8s.io` domains; the rest (node roles, and
//! `node-restriction.kubernetes.io/` above all) is for the cluster's administrators to set.

/// Label prefixes and keys under kubernetes.io / k8s.io a node may set on itself (upstream's
/// kubelet labels); any other label in those domains is the cluster's to set.
const NODE_SELF_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "node.kubernetes.io/instance-type",
];
const NODE_SELF_LABEL_DOMAINS: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Whether a node may set the label `key` on its own Node (upstream's NodeRestriction and
/// kubelet `--node-labels` rule).
pub fn node_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let reserved = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    if !reserved("kubernetes.io") && !reserved("k8s.io") {
        return true;
    }
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return false;
    }
    NODE_SELF_LABELS.contains(&key)
        || NODE_SELF_LABEL_DOMAINS
            .iter()
            .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_set_their_own_labels_and_no_reserved_ones() {
        for ok in [
            "mine",
            "example.com/x",
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "kubelet.kubernetes.io/a",
            "x.node.kubernetes.io/b",
        ] {
            assert!(node_may_set(ok), "{ok}");
        }
        for no in [
            "node-role.kubernetes.io/control-plane",
            "node-restriction.kubernetes.io/x",
            "kubernetes.io/role",
            "a.k8s.io/b",
            "x.node-restriction.kubernetes.io/y",
        ] {
            assert!(!node_may_set(no), "{no}");
        }
    }
}
