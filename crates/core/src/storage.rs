//! Names of kinglet's built-in local-path storage, shared by the API server (the default
//! StorageClass), the PersistentVolume controller (provisioning, reclaim) and the kubelet
//! (the directories on the node).

/// The provisioner of kinglet's local-path volumes. Not rancher's `rancher.io/local-path`: a
/// cluster may run rancher's provisioner too, and two provisioners must not both answer one
/// class.
pub const LOCAL_PATH_PROVISIONER: &str = "kinglet.io/local-path";

/// The annotation naming the provisioner that made a PersistentVolume (upstream's).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The finalizer on every local-path PersistentVolume: the controller deletes a Released
/// volume of reclaim policy `Delete`, and the kubelet of the volume's node removes the
/// directory, then this finalizer. Only that explicit decision removes data; a volume that is
/// merely missing from the API server (a restored snapshot, an administrator's delete of a
/// Retain volume) leaves its directory alone.
pub const LOCAL_PATH_CLEANUP_FINALIZER: &str = "kinglet.io/local-path-cleanup";
