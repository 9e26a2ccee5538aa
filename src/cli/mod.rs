//! Command line: `kinglet server` and friends. Every flag also reads `KINGLET_<FLAG>` from the
//! environment, and `--config` names a YAML file whose keys are flag names, merged with the
//! drop-ins in `<config>.d/*.yaml` (k3s's layout); command-line flags and environment variables
//! win over the files.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kinglet", version = crate::VERSION_LINE, about = "A whole Kubernetes distribution in one binary", args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (API server, controllers, scheduler) and, unless disabled, a node.
    Server(Box<ServerArgs>),
    /// Run only a node, joined to a remote server with a join token.
    Agent(Box<AgentArgs>),
    /// Manage the node's image store (for air-gapped devices: import tarballs).
    Images(ImagesArgs),
    /// Remove the node's network set-up (iptables chains and jumps, pod bridge, cluster DNS
    /// address, blackhole routes): for uninstalling. Stop kinglet first.
    Cleanup(CleanupArgs),
    /// Check that this host has what a node needs (kernel features, cgroups, iptables,
    /// overlayfs), with the fix for each thing missing; exits 1 when something required is.
    CheckConfig,
    /// Print the join token agents use; `rotate` replaces it, `create`/`list`/`delete` manage
    /// extra, expiring ones.
    Token(TokenArgs),
    /// Certificates: `check` lists them with their expiry; `rotate` renews the leaf
    /// certificates now, with new keys (stop the server first; the CA stays).
    Certificate(CertificateArgs),
    /// Secrets encryption at rest (`--secrets-encryption`): `status`; `rotate` re-encrypts
    /// every Secret with a new key and drops the old ones (stop the server first).
    SecretsEncrypt(SecretsEncryptArgs),
    /// Write a snapshot of the server's datastore, token and PKI to one file, while the server
    /// runs or not (`kinglet server --restore FILE` brings it back).
    Backup(BackupArgs),
    /// Internal (kinglet-killall.sh, kinglet-uninstall.sh): print the directories
    /// `kinglet server|agent ARGS` would use, config file and drop-ins merged, as sh assignments.
    #[command(hide = true)]
    Dirs {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Internal: supervise one container (started by the node).
    #[command(hide = true)]
    Supervise { dir: PathBuf },
    /// Internal: make and pin a pod's namespaces.
    #[command(hide = true)]
    Sandbox {
        dir: PathBuf,
        hostname: String,
        /// The pod's interface (JSON); without it the pod has loopback only.
        #[arg(long)]
        network: Option<String>,
    },
    /// Internal: run a command in a running container.
    #[command(hide = true)]
    Exec {
        dir: PathBuf,
        /// Run on a terminal whose controlling end is sent to this Unix socket.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Where the server keeps its state.
    #[arg(
        long,
        env = "KINGLET_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    /// The admin kubeconfig (for `create`, `list` and `delete`, which go through the API).
    #[arg(
        long,
        env = "KUBECONFIG",
        default_value = "/etc/kinglet/kinglet.yaml",
        global = true
    )]
    pub kubeconfig: PathBuf,
    #[command(subcommand)]
    pub command: Option<TokenCommand>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Replace the server token with a new secret and print it; the old one stops working.
    Rotate,
    /// Make an extra join token (a bootstrap token) and print it.
    Create {
        /// How long the token stays valid (`30m`, `24h`, `7d`; `0`: forever).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What the token is for, shown by `list`.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the extra join tokens.
    #[command(alias = "ls")]
    List,
    /// Delete extra join tokens (by id, `<id>.<secret>` or whole token).
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where the server keeps its state.
    #[arg(long, env = "KINGLET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The file to write, a gzip'd tar with mode 0600: it holds the cluster's keys (default:
    /// `<data-dir>/server/db/snapshots/on-demand-<node>-<unix time>.tar.gz`).
    #[arg(long)]
    pub to: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CertificateArgs {
    /// Where kinglet keeps its state.
    #[arg(
        long,
        env = "KINGLET_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: CertificateCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CertificateCommand {
    /// List the certificates with their expiry (WARNING: due for renewal within 90 days).
    Check,
    /// Renew leaf certificates now with new keys, the old ones kept in `tls-<timestamp>/`.
    Rotate {
        /// Only these (repeatable or comma-separated): admin, api-server, auth-proxy, kubelet.
        #[arg(long = "service", short = 's', value_delimiter = ',')]
        services: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SecretsEncryptArgs {
    /// Where the server keeps its state.
    #[arg(
        long,
        env = "KINGLET_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: SecretsEncryptCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SecretsEncryptCommand {
    /// Whether Secrets are encrypted, and with which keys.
    Status,
    /// Add a new key, re-encrypt every Secret with it, then drop the old keys.
    Rotate,
}

#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// Pod network range the node used.
    #[arg(long, env = "KINGLET_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Service range the node used.
    #[arg(long, env = "KINGLET_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Cluster DNS address the node held (default: the tenth address of the service range).
    #[arg(long, env = "KINGLET_CLUSTER_DNS")]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The node's run directory, where it kept the host settings it changed, to put back.
    #[arg(long, env = "KINGLET_RUN_DIR", default_value = "/run/kinglet")]
    pub run_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ImagesArgs {
    /// Where kinglet keeps its state.
    #[arg(
        long,
        env = "KINGLET_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ImagesCommand {
    /// Import OCI-layout or `docker save` tarballs (plain, .gz or .zst).
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only image names (or IDs of unnamed images).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Pull images from their registries.
    Pull {
        #[arg(required = true)]
        images: Vec<String>,
        /// Registry user name (the password is read from KINGLET_REGISTRY_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        #[arg(long, env = "KINGLET_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Registry mirrors, credentials and CAs (k3s's `registries.yaml` format).
        #[arg(long, env = "KINGLET_PRIVATE_REGISTRY", default_value = DEFAULT_REGISTRIES)]
        private_registry: PathBuf,
        /// Pull only from the configured mirrors of a registry, never from the registry itself.
        #[arg(long, env = "KINGLET_DISABLE_DEFAULT_REGISTRY_ENDPOINT")]
        disable_default_registry_endpoint: bool,
    },
    /// Remove images by name or ID.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// YAML file whose keys are flag names, plus drop-ins in `<file>.d/*.yaml` (flags given
    /// on the command line win).
    #[arg(long, env = "KINGLET_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The server to join (`https://<host>:6443`), or several sharing one datastore separated
    /// by commas: the agent uses whichever answers, and every server the cluster lists.
    #[arg(long, env = "KINGLET_URL")]
    pub server: String,
    /// The join token (`K10<CA hash>::<user>:<secret>`, as `kinglet token` prints it).
    #[arg(long, env = "KINGLET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long, env = "KINGLET_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Where kinglet keeps its state (the agent's certificates under `agent/`).
    #[arg(long, env = "KINGLET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Verbose logging.
    #[arg(long, env = "KINGLET_DEBUG")]
    pub debug: bool,
}

/// The node's flags, shared by `kinglet server` (its embedded node) and `kinglet agent`.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Pod network range.
    #[arg(long, env = "KINGLET_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Service ClusterIP range.
    #[arg(long, env = "KINGLET_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Cluster DNS service address (default: the tenth address of the service range, as k3s).
    #[arg(long, env = "KINGLET_CLUSTER_DNS")]
    pub cluster_dns: Option<IpAddr>,
    /// Cluster DNS domain.
    #[arg(long, env = "KINGLET_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's resolver configuration: upstream servers of the cluster DNS, and what pods
    /// with `dnsPolicy: Default` get.
    #[arg(long, env = "KINGLET_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long, env = "KINGLET_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's address (default: the advertised address; an agent's: its address towards
    /// the server).
    #[arg(long, env = "KINGLET_NODE_IP")]
    pub node_ip: Option<IpAddr>,
    /// Labels for this node, key=value (repeatable).
    #[arg(long = "node-label", env = "KINGLET_NODE_LABEL", value_delimiter = ',')]
    pub node_label: Vec<String>,
    /// Taints for this node, key[=value]:Effect (repeatable).
    #[arg(long = "node-taint", env = "KINGLET_NODE_TAINT", value_delimiter = ',')]
    pub node_taint: Vec<String>,
    /// Parent cgroup of the node's `kubepods` tree.
    #[arg(long, env = "KINGLET_CGROUP_ROOT", default_value = "/")]
    pub cgroup_root: String,
    /// Where container logs are written.
    #[arg(long, env = "KINGLET_POD_LOG_DIR", default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Runtime state that a reboot must clear (best on a tmpfs, as `/run` is).
    #[arg(long, env = "KINGLET_RUN_DIR", default_value = "/run/kinglet")]
    pub run_dir: PathBuf,
    /// Most pods this node runs.
    #[arg(long, env = "KINGLET_MAX_PODS", default_value_t = 110)]
    pub max_pods: u32,
    /// Port of the kubelet API.
    #[arg(long, env = "KINGLET_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// A container's log is rotated above this many bytes.
    #[arg(long, env = "KINGLET_CONTAINER_LOG_MAX_SIZE", default_value_t = 10 * 1024 * 1024)]
    pub container_log_max_size: u64,
    /// Log files kept per container, the live one included.
    #[arg(long, env = "KINGLET_CONTAINER_LOG_MAX_FILES", default_value_t = 5)]
    pub container_log_max_files: usize,
    /// Kubelet settings by upstream's flag names, name=value (repeatable): max-pods,
    /// eviction-hard, image-gc-high-threshold, image-gc-low-threshold, image-minimum-gc-age,
    /// container-log-max-size, container-log-max-files. They win over the flags above.
    #[arg(long = "kubelet-arg", env = "KINGLET_KUBELET_ARG")]
    pub kubelet_arg: Vec<String>,
    /// The interface that carries the VXLAN overlay to other nodes (default: the one holding
    /// the node's address).
    #[arg(long, env = "KINGLET_VXLAN_IFACE")]
    pub vxlan_iface: Option<String>,
    /// Start the node even where another Kubernetes network is on the host (kube-proxy, k3s or
    /// flannel processes, their `cni0` or `flannel.1`, KUBE-* iptables chains kinglet did not
    /// write), taking over its bridge and shared chains. Without it the server refuses to start.
    #[arg(long, env = "KINGLET_TAKE_OVER_HOST_NETWORK")]
    pub take_over_host_network: bool,
    /// Registry mirrors, rewrites, credentials and CAs, in k3s's `registries.yaml` format (a
    /// missing file is no configuration).
    #[arg(long, env = "KINGLET_PRIVATE_REGISTRY", default_value = DEFAULT_REGISTRIES)]
    pub private_registry: PathBuf,
    /// Pull only from the mirrors `--private-registry` gives a registry, never from the
    /// registry itself.
    #[arg(long, env = "KINGLET_DISABLE_DEFAULT_REGISTRY_ENDPOINT")]
    pub disable_default_registry_endpoint: bool,
}

/// Where `--private-registry` points unless told otherwise (k3s: /etc/rancher/k3s/registries.yaml).
pub const DEFAULT_REGISTRIES: &str = "/etc/kinglet/registries.yaml";

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// YAML file whose keys are flag names, plus drop-ins in `<file>.d/*.yaml` (flags given
    /// on the command line win).
    #[arg(long, env = "KINGLET_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Where kinglet keeps its state.
    #[arg(long, env = "KINGLET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, env = "KINGLET_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// HTTPS port of the API server.
    #[arg(long, env = "KINGLET_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address advertised to clients and nodes (default: the host's first non-loopback address).
    #[arg(long, env = "KINGLET_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san", env = "KINGLET_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// NodePort range.
    #[arg(
        long,
        env = "KINGLET_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,
    /// Where to write the admin kubeconfig.
    #[arg(
        long,
        env = "KINGLET_WRITE_KUBECONFIG",
        default_value = "/etc/kinglet/kinglet.yaml"
    )]
    pub write_kubeconfig: PathBuf,
    /// File mode of the kubeconfig (octal).
    #[arg(long, env = "KINGLET_WRITE_KUBECONFIG_MODE", default_value = "0600")]
    pub write_kubeconfig_mode: String,
    /// Seconds between compactions of the datastore's history.
    #[arg(long, env = "KINGLET_COMPACTION_INTERVAL", default_value_t = 300)]
    pub compaction_interval: u64,
    /// When to snapshot the datastore, token and PKI, as `kinglet backup` does: five cron
    /// fields or a macro such as `@daily`, in the host's time zone; "" turns snapshots off.
    /// On by default as in k3s (twice a day): a device left alone for years keeps a recent
    /// copy to come back from, at the cost of a few compressed copies of a small database.
    #[arg(
        long,
        env = "KINGLET_SNAPSHOT_SCHEDULE",
        default_value = "0 */12 * * *"
    )]
    pub snapshot_schedule: String,
    /// Scheduled snapshots kept: older ones this node took are deleted (0 keeps all).
    #[arg(long, env = "KINGLET_SNAPSHOT_RETENTION", default_value_t = 5)]
    pub snapshot_retention: usize,
    /// Where scheduled snapshots go (default: `<data-dir>/server/db/snapshots`).
    #[arg(long, env = "KINGLET_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Restore the cluster from a `kinglet backup` archive, then start: its objects (with
    /// their uids and resourceVersions), token and CAs come back, so kubeconfigs and join
    /// tokens keep working. Only into a data directory without a datastore
    /// (`server/db/state.db`); starting again with the flag is harmless once restored.
    #[arg(long, env = "KINGLET_RESTORE")]
    pub restore: Option<PathBuf>,
    /// Run only the API server and control plane, no node.
    #[arg(long, env = "KINGLET_DISABLE_AGENT")]
    pub disable_agent: bool,
    /// Encrypt Secrets at rest (AES-GCM, key in `<data-dir>/server/cred/encryption-config.json`).
    /// Once the key file exists it stays in use, flag or not, so Secrets stay readable.
    #[arg(long, env = "KINGLET_SECRETS_ENCRYPTION")]
    pub secrets_encryption: bool,
    /// Where the local-path provisioner puts volumes on every node (default:
    /// `<data-dir>/storage`); agents' nodes use the same path.
    #[arg(long, env = "KINGLET_DEFAULT_LOCAL_STORAGE_PATH")]
    pub default_local_storage_path: Option<PathBuf>,
    /// The datastore: `sqlite://<path>` (default: `<data-dir>/server/db/state.db`), or an etcd
    /// v3 cluster as `https://host:2379,https://host2:2379` (or `http://`), which several
    /// servers may share.
    #[arg(long, env = "KINGLET_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// CA bundle that verifies the etcd servers.
    #[arg(long, env = "KINGLET_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate presented to etcd.
    #[arg(long, env = "KINGLET_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,
    /// Key of `--datastore-certfile`.
    #[arg(long, env = "KINGLET_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,
    /// The server token (`K10<CA hash>::server:<secret>` or just the secret): joins the
    /// cluster whose bootstrap data in the shared datastore it decrypts; on the first server,
    /// the token to use instead of a random one.
    #[arg(long, env = "KINGLET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the server token.
    #[arg(long, env = "KINGLET_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// A server of the cluster to join (`https://host:6443`): the CA it serves must match the
    /// token's CA hash and the datastore's CA.
    #[arg(long, env = "KINGLET_URL")]
    pub server: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Verbose logging.
    #[arg(long, env = "KINGLET_DEBUG")]
    pub debug: bool,
}

impl ServerArgs {
    /// `--datastore-*` as the store takes them; bad combinations refused in one line.
    pub fn datastore(&self) -> anyhow::Result<kinglet_store::Datastore> {
        let endpoint = self
            .datastore_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty());
        let etcd = endpoint
            .as_deref()
            .is_some_and(|e| !e.starts_with("sqlite://"));
        if let Some(e) = &endpoint
            && etcd
            && !e
                .split(',')
                .all(|u| u.trim().starts_with("https://") || u.trim().starts_with("http://"))
        {
            anyhow::bail!(
                "--datastore-endpoint {e:?}: want sqlite://<path> or http(s)://host:port[,http(s)://host:port...]"
            );
        }
        let tls = [
            ("--datastore-cafile", &self.datastore_cafile),
            ("--datastore-certfile", &self.datastore_certfile),
            ("--datastore-keyfile", &self.datastore_keyfile),
        ];
        if !etcd && let Some((flag, _)) = tls.iter().find(|(_, f)| f.is_some()) {
            anyhow::bail!("{flag} is only for an etcd --datastore-endpoint");
        }
        if self.datastore_certfile.is_some() != self.datastore_keyfile.is_some() {
            anyhow::bail!("--datastore-certfile and --datastore-keyfile go together");
        }
        if self.server.is_some() && !etcd {
            anyhow::bail!(
                "--server joins a cluster through a shared datastore: give its --datastore-endpoint"
            );
        }
        if self.server.is_some() && self.token.is_none() && self.token_file.is_none() {
            anyhow::bail!("--server needs the cluster's --token");
        }
        if self.restore.is_some() && etcd {
            anyhow::bail!("--restore restores into the SQLite datastore, not into etcd");
        }
        Ok(kinglet_store::Datastore {
            endpoint,
            ca_file: self.datastore_cafile.clone(),
            cert_file: self.datastore_certfile.clone(),
            key_file: self.datastore_keyfile.clone(),
        })
    }

    /// `--token`, or the contents of `--token-file`.
    pub fn server_token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("reading --token-file {}: {e}", f.display()))?;
                Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
            }
            (None, None) => Ok(None),
        }
    }

    /// The embedded node's settings.
    pub fn node_config(&self, advertise: IpAddr) -> anyhow::Result<kinglet_kubelet::NodeConfig> {
        self.node.node_config(&self.data_dir, advertise)
    }

    /// What the node's start-up check of the host's network needs.
    pub fn host_check(&self) -> anyhow::Result<kinglet_network::host_check::Config> {
        self.node.host_check()
    }

    /// `--cluster-dns`, or the tenth address of the service range.
    pub fn cluster_dns(&self) -> anyhow::Result<IpAddr> {
        self.node.cluster_dns()
    }

    pub fn node_port_range(&self) -> anyhow::Result<(u16, u16)> {
        let (lo, hi) = self
            .service_node_port_range
            .split_once('-')
            .ok_or_else(|| {
                anyhow::anyhow!("--service-node-port-range must look like 30000-32767")
            })?;
        let (lo, hi): (u16, u16) = (lo.trim().parse()?, hi.trim().parse()?);
        anyhow::ensure!(
            lo <= hi && lo > 0,
            "--service-node-port-range: {lo} is above {hi}"
        );
        Ok((lo, hi))
    }

    /// `--default-local-storage-path`, or `<data-dir>/storage` (k3s's layout). A relative path
    /// is refused: it would name another directory on every node.
    pub fn local_storage_path(&self) -> anyhow::Result<PathBuf> {
        let path = match &self.default_local_storage_path {
            Some(p) => p.clone(),
            None => std::path::absolute(&self.data_dir)?.join("storage"),
        };
        anyhow::ensure!(
            path.is_absolute(),
            "--default-local-storage-path must be an absolute path, not {:?}",
            path.display().to_string()
        );
        Ok(path)
    }

    pub fn kubeconfig_mode(&self) -> anyhow::Result<u32> {
        u32::from_str_radix(self.write_kubeconfig_mode.trim_start_matches("0o"), 8).map_err(|_| {
            anyhow::anyhow!(
                "--write-kubeconfig-mode must be an octal mode such as 0644, not {:?}",
                self.write_kubeconfig_mode
            )
        })
    }
}

impl NodeArgs {
    /// The node's settings; `default_ip` is its address unless `--node-ip` names one.
    pub fn node_config(
        &self,
        data_dir: &std::path::Path,
        default_ip: IpAddr,
    ) -> anyhow::Result<kinglet_kubelet::NodeConfig> {
        let node_name = match &self.node_name {
            Some(n) => n.clone(),
            None => hostname::get()?.to_string_lossy().to_lowercase(),
        };
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.node_label {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--node-label {l:?}: expected key=value"))?;
            if !kinglet_core::node_labels::node_may_set(k) {
                anyhow::bail!(
                    "--node-label {k:?}: a node may not set labels in the kubernetes.io or k8s.io domains other than its own kubelet labels (set {k:?} with kubectl label node)"
                );
            }
            labels.insert(k.to_string(), v.to_string());
        }
        let mut cfg = kinglet_kubelet::NodeConfig {
            node_name,
            node_ip: self.node_ip.unwrap_or(default_ip),
            labels,
            taints: self
                .node_taint
                .iter()
                .map(|t| kinglet_kubelet::parse_taint(t))
                .collect::<anyhow::Result<_>>()?,
            data_dir: data_dir.to_path_buf(),
            pod_log_dir: self.pod_log_dir.clone(),
            run_dir: self.run_dir.clone(),
            cluster_cidr: ipv4_net("--cluster-cidr", &self.cluster_cidr)?,
            service_cidr: ipv4_net("--service-cidr", &self.service_cidr)?,
            cluster_dns: match self.cluster_dns()? {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => anyhow::bail!("--cluster-dns {ip}: only IPv4 is supported yet"),
            },
            cluster_domain: self.cluster_domain.clone(),
            resolv_conf: self.resolv_conf.clone(),
            cgroup_root: self.cgroup_root.trim_end_matches('/').to_string(),
            max_pods: self.max_pods,
            kubelet_port: self.kubelet_port,
            container_log_max_size: self.container_log_max_size,
            container_log_max_files: self.container_log_max_files,
            eviction_hard: kinglet_kubelet::default_thresholds(),
            image_gc: kinglet_kubelet::ImageGcPolicy::default(),
            serving: None,
            // An agent's node keeps one (`kinglet agent` sets it).
            offline_copy: false,
            registries: self.registries()?,
        };
        for arg in &self.kubelet_arg {
            apply_kubelet_arg(&mut cfg, arg)?;
        }
        anyhow::ensure!(
            cfg.image_gc.low_percent < cfg.image_gc.high_percent,
            "--kubelet-arg: image-gc-low-threshold ({}) must be less than image-gc-high-threshold ({})",
            cfg.image_gc.low_percent,
            cfg.image_gc.high_percent
        );
        Ok(cfg)
    }

    /// `--private-registry`, read (a missing file is no configuration).
    pub fn registries(&self) -> anyhow::Result<kinglet_image::Registries> {
        kinglet_image::Registries::load(
            &self.private_registry,
            self.disable_default_registry_endpoint,
        )
        .map_err(|e| anyhow::anyhow!("--private-registry {e:#}"))
    }

    /// What the node's start-up check of the host's network needs.
    pub fn host_check(&self) -> anyhow::Result<kinglet_network::host_check::Config> {
        Ok(kinglet_network::host_check::Config {
            cluster_cidr: ipv4_net("--cluster-cidr", &self.cluster_cidr)?,
            service_cidr: ipv4_net("--service-cidr", &self.service_cidr)?,
            cluster_dns: match self.cluster_dns()? {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => anyhow::bail!("--cluster-dns {ip}: only IPv4 is supported yet"),
            },
            take_over: self.take_over_host_network,
        })
    }

    /// `--cluster-dns`, or the tenth address of the service range.
    pub fn cluster_dns(&self) -> anyhow::Result<IpAddr> {
        match self.cluster_dns {
            Some(ip) => Ok(ip),
            None => Ok(IpAddr::V4(default_cluster_dns(ipv4_net(
                "--service-cidr",
                &self.service_cidr,
            )?))),
        }
    }
}

/// Applies one `--kubelet-arg name=value`.
fn apply_kubelet_arg(cfg: &mut kinglet_kubelet::NodeConfig, arg: &str) -> anyhow::Result<()> {
    let (name, value) = arg
        .trim_start_matches("--")
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--kubelet-arg {arg:?}: expected name=value"))?;
    let bad = |what: &str| anyhow::anyhow!("--kubelet-arg {arg:?}: {what}");
    let percent = || {
        value
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| bad("expected a percentage 0-100"))
    };
    match name {
        "max-pods" => cfg.max_pods = value.parse().map_err(|_| bad("expected a number"))?,
        "eviction-hard" => cfg.eviction_hard = kinglet_kubelet::parse_thresholds(value)?,
        "image-gc-high-threshold" => cfg.image_gc.high_percent = percent()?,
        "image-gc-low-threshold" => cfg.image_gc.low_percent = percent()?,
        "image-minimum-gc-age" => {
            cfg.image_gc.min_age =
                parse_duration(value).ok_or_else(|| bad("expected a duration such as 2m"))?
        }
        "container-log-max-size" => {
            cfg.container_log_max_size = kinglet_core::resources::parse_milli(value)
                .filter(|m| *m > 0)
                .map(|m| (m / 1000) as u64)
                .ok_or_else(|| bad("expected a size such as 10Mi"))?
        }
        "container-log-max-files" => {
            cfg.container_log_max_files = value
                .parse()
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| bad("expected a number of at least 2"))?
        }
        _ => anyhow::bail!(
            "--kubelet-arg {arg:?}: unsupported; supported are max-pods, eviction-hard, \
             image-gc-high-threshold, image-gc-low-threshold, image-minimum-gc-age, \
             container-log-max-size, container-log-max-files"
        ),
    }
    Ok(())
}

/// A Go-style duration: `90s`, `2m`, `1h30m`, `500ms`, `0`.
fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s.trim();
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

/// The drop-in directory of a config file: `config.yaml` -> `config.yaml.d`.
fn drop_in_dir(path: &std::path::Path) -> PathBuf {
    let mut d = path.as_os_str().to_os_string();
    d.push(".d");
    PathBuf::from(d)
}

/// Reads one config file as a mapping of flag names to values (`None`: empty file).
fn read_config_file(
    path: &std::path::Path,
    text: &str,
) -> anyhow::Result<Option<serde_yaml::Mapping>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let msg = e.to_string().replace('\n', " ");
        anyhow::anyhow!("config file {}: invalid YAML: {msg}", path.display())
    })?;
    match doc {
        serde_yaml::Value::Mapping(m) => Ok(Some(m)),
        serde_yaml::Value::Null => Ok(None),
        _ => anyhow::bail!(
            "config file {}: expected a mapping of flag names to values",
            path.display()
        ),
    }
}

/// The config file and then its drop-ins (`<config>.d/*.yaml` and `*.yml`, in lexical order
/// of file name), each with its mapping. A missing file (unless `explicit`) or directory is
/// no error; an unreadable or invalid one is.
fn config_files(
    path: &std::path::Path,
    explicit: bool,
) -> anyhow::Result<Vec<(PathBuf, serde_yaml::Mapping)>> {
    let mut files = Vec::new();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Some(m) = read_config_file(path, &text)? {
                files.push((path.to_path_buf(), m));
            }
        }
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("reading config file {}: {e}", path.display()),
    }
    let dir = drop_in_dir(path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => anyhow::bail!("reading config directory {}: {e}", dir.display()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| anyhow::anyhow!("reading config directory {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.push(entry.file_name());
        }
    }
    names.sort();
    for name in names {
        let file = dir.join(name);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", file.display()))?;
        if let Some(m) = read_config_file(&file, &text)? {
            files.push((file, m));
        }
    }
    Ok(files)
}

/// Turns a config file and its drop-ins into `--flag=value` arguments (lists become repeated
/// flags), skipping keys whose environment variable is set, so that environment and command
/// line win. A later file's key replaces an earlier one's; `key+: [...]` appends to `key`.
fn config_args(path: &std::path::Path, explicit: bool) -> anyhow::Result<Vec<String>> {
    // Flag name, value, and the file that last set it (for error messages).
    let mut merged: Vec<(String, serde_yaml::Value, PathBuf)> = Vec::new();
    for (file, map) in config_files(path, explicit)? {
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| {
                anyhow::anyhow!("config file {}: keys must be strings", file.display())
            })?;
            let (name, append) = match key.strip_suffix('+') {
                Some(n) => (n.to_string(), true),
                None => (key.to_string(), false),
            };
            anyhow::ensure!(
                !name.is_empty() && !name.starts_with('-'),
                "config file {}: {key:?} is not a flag name",
                file.display()
            );
            let pos = merged.iter().position(|(n, _, _)| *n == name);
            match (pos, append) {
                (Some(i), true) => {
                    let old = std::mem::replace(&mut merged[i].1, serde_yaml::Value::Null);
                    let mut items = match old {
                        serde_yaml::Value::Sequence(s) => s,
                        serde_yaml::Value::Null => Vec::new(),
                        other => vec![other],
                    };
                    match v {
                        serde_yaml::Value::Sequence(s) => items.extend(s),
                        serde_yaml::Value::Null => {}
                        other => items.push(other),
                    }
                    merged[i].1 = serde_yaml::Value::Sequence(items);
                    merged[i].2 = file.clone();
                }
                (Some(i), false) => merged[i] = (name, v, file.clone()),
                (None, _) => merged.push((name, v, file.clone())),
            }
        }
    }
    let mut args = Vec::new();
    for (key, v, file) in merged {
        if std::env::var_os(format!("KINGLET_{}", key.to_uppercase().replace('-', "_"))).is_some() {
            continue;
        }
        let scalar = |v: &serde_yaml::Value| -> anyhow::Result<String> {
            Ok(match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => anyhow::bail!(
                    "config file {}: {key} must be a scalar or a list of scalars",
                    file.display()
                ),
            })
        };
        match &v {
            serde_yaml::Value::Sequence(items) => {
                for it in items {
                    args.push(format!("--{key}={}", scalar(it)?));
                }
            }
            serde_yaml::Value::Bool(true) => args.push(format!("--{key}")),
            serde_yaml::Value::Bool(false) => {}
            other => args.push(format!("--{key}={}", scalar(other)?)),
        }
    }
    Ok(args)
}

/// The config file `argv` names (`--config FILE`, `--config=FILE`, then `KINGLET_CONFIG`, then
/// the default), and whether it was named explicitly.
fn config_path(argv: &[String]) -> (PathBuf, bool) {
    let mut found = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            if let Some(v) = it.next() {
                found = Some(PathBuf::from(v));
            }
        } else if let Some(v) = a.strip_prefix("--config=") {
            found = Some(PathBuf::from(v));
        }
    }
    match found {
        Some(p) => (p, true),
        None => match std::env::var_os("KINGLET_CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        },
    }
}

const DEFAULT_CONFIG: &str = "/etc/kinglet/config.yaml";
/// Where kinglet keeps its state (k3s: /var/lib/rancher/k3s).
const DEFAULT_DATA_DIR: &str = "/var/lib/kinglet";

/// `argv` with the config file's flags (for `server` and `agent`) right after the
/// subcommand, so that later command-line flags override them.
fn merged_argv(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    if !matches!(argv.get(1).map(String::as_str), Some("server" | "agent")) {
        return Ok(argv);
    }
    let (path, explicit) = config_path(&argv[2..]);
    let extra = config_args(&path, explicit)?;
    let mut merged = argv[..2].to_vec();
    merged.extend(extra);
    merged.extend(argv[2..].iter().cloned());
    Ok(merged)
}

/// Parses the command line, merging the config file and its drop-ins underneath it.
pub fn parse() -> anyhow::Result<Cli> {
    let argv = merged_argv(std::env::args().collect())?;
    Ok(Cli::try_parse_from(&argv).unwrap_or_else(|e| e.exit()))
}

/// `kinglet dirs server|agent ARGS`: the data, run and pod log directories and the cgroup
/// root of that command line (relative paths from `/`, where services run), as `NAME='value'`
/// lines for sh.
pub fn print_dirs(args: &[String]) -> anyhow::Result<()> {
    let argv = std::iter::once("kinglet".to_string()).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(merged_argv(argv.collect())?).map_err(|e| {
        let msg = e.to_string();
        anyhow::anyhow!("{}", msg.lines().next().unwrap_or("invalid arguments"))
    })?;
    let (data_dir, node) = match cli.command {
        Command::Server(a) => (a.data_dir, a.node),
        Command::Agent(a) => (a.data_dir, a.node),
        _ => anyhow::bail!("expected the arguments of `kinglet server` or `kinglet agent`"),
    };
    let root = std::path::Path::new("/");
    let cgroup_root = PathBuf::from(&node.cgroup_root);
    for (name, path) in [
        ("DATA_DIR", root.join(data_dir)),
        ("RUN_DIR", root.join(node.run_dir)),
        ("POD_LOG_DIR", root.join(node.pod_log_dir)),
        ("CGROUP_ROOT", root.join(cgroup_root)),
    ] {
        let path = path
            .to_str()
            .ok_or_else(|| anyhow::anyhow!("{name} {path:?} is not UTF-8"))?
            .to_string();
        println!("{name}='{}'", path.replace('\'', "'\\''"));
    }
    Ok(())
}

/// An IPv4 network flag (`10.42.0.0/16`).
/// The cluster DNS address when none is given: the range's tenth address (10.43.0.10).
pub fn default_cluster_dns(services: ipnet::Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(services.network()) + 10)
}

pub fn ipv4_net(flag: &str, value: &str) -> anyhow::Result<ipnet::Ipv4Net> {
    value
        .parse::<ipnet::Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|_| {
            anyhow::anyhow!("{flag} {value:?}: expected an IPv4 network such as 10.42.0.0/16")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "https-listen-port: 7443\ntls-san: [a.example, 10.0.0.9]\ndisable-agent: true\ncluster-domain: edge.local\n").unwrap();
        let extra = config_args(&path, true).unwrap();
        let mut argv = vec!["kinglet".to_string(), "server".to_string()];
        argv.extend(extra);
        argv.push("--cluster-domain=cli.local".into());
        let cli = Cli::try_parse_from(&argv).unwrap();
        let Command::Server(a) = cli.command else {
            panic!("not the server command")
        };
        assert_eq!(a.https_listen_port, 7443);
        assert_eq!(a.tls_san, vec!["a.example", "10.0.0.9"]);
        assert!(a.disable_agent);
        assert_eq!(a.node.cluster_domain, "cli.local");
        std::fs::write(&path, "- not a map").unwrap();
        assert!(config_args(&path, true).is_err());
        assert!(
            config_args(&dir.path().join("missing.yaml"), false)
                .unwrap()
                .is_empty()
        );
        assert!(config_args(&dir.path().join("missing.yaml"), true).is_err());
    }

    #[test]
    fn kubelet_args_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "kubelet-arg:\n- max-pods=20\n- eviction-hard=memory.available<200Mi,nodefs.available<5%\n- image-gc-high-threshold=70\n- image-gc-low-threshold=60\n- image-minimum-gc-age=1m30s\n- container-log-max-size=5Mi\n",
        )
        .unwrap();
        let mut argv = vec!["kinglet".to_string(), "server".to_string()];
        argv.extend(config_args(&path, true).unwrap());
        let Command::Server(a) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("not the server command")
        };
        let cfg = a.node_config("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(cfg.max_pods, 20);
        assert_eq!(cfg.eviction_hard.len(), 2);
        assert_eq!(cfg.image_gc.high_percent, 70);
        assert_eq!(cfg.image_gc.min_age, std::time::Duration::from_secs(90));
        assert_eq!(cfg.container_log_max_size, 5 * 1024 * 1024);
        for bad in [
            "nope=1",
            "max-pods",
            "image-gc-high-threshold=101",
            "image-minimum-gc-age=5 minutes",
            "container-log-max-files=1",
        ] {
            let mut b = a.clone();
            b.node.kubelet_arg = vec![bad.to_string()];
            assert!(
                b.node_config("127.0.0.1".parse().unwrap()).is_err(),
                "{bad}"
            );
        }
        let mut b = a.clone();
        b.node.kubelet_arg = vec!["image-gc-low-threshold=90".into()];
        assert!(b.node_config("127.0.0.1".parse().unwrap()).is_err());
    }

    /// A config.yaml with drop-ins: 10-a.yaml, 20-b.yaml, 30-c.yml, 9-last.yaml, ignored.txt.
    fn drop_in_fixture() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "https-listen-port: 6443\ncluster-domain: main.local\nnode-label: [a=1]\ntls-san: [main.example]\nnode-taint+: [t=1:NoSchedule]\n",
        )
        .unwrap();
        let d = dir.path().join("config.yaml.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("10-a.yaml"),
            "https-listen-port: 7443\nnode-label+: [b=2]\ncluster-domain: a.local\n",
        )
        .unwrap();
        std::fs::write(
            d.join("20-b.yaml"),
            "https-listen-port: 8443\nnode-label+: c=3\ntls-san: [b.example]\n",
        )
        .unwrap();
        std::fs::write(d.join("30-c.yml"), "disable-agent: true\n").unwrap();
        // Lexical order: "9-last" sorts after "30-c", so it wins over 10-a.
        std::fs::write(d.join("9-last.yaml"), "cluster-domain: nine.local\n").unwrap();
        std::fs::write(
            d.join("ignored.txt"),
            "https-listen-port: 9999\n[not yaml\n",
        )
        .unwrap();
        std::fs::write(d.join("empty.yaml"), "").unwrap();
        (dir, path)
    }

    fn server_args(argv: &[&str]) -> ServerArgs {
        let argv = merged_argv(argv.iter().map(|a| a.to_string()).collect()).unwrap();
        match Cli::try_parse_from(&argv).unwrap().command {
            Command::Server(a) => *a,
            other => panic!("not the server command: {other:?}"),
        }
    }

    #[test]
    fn config_drop_ins_replace_append_in_lexical_order() {
        let (_dir, path) = drop_in_fixture();
        let p = path.to_str().unwrap();
        let a = server_args(&["kinglet", "server", "--config", p]);
        // Replacement: 20-b.yaml's port replaces 10-a.yaml's and the main file's.
        assert_eq!(a.https_listen_port, 8443);
        assert_eq!(a.tls_san, vec!["b.example"]);
        // `+` appends, in file order; a `+` key with nothing before it just sets.
        assert_eq!(a.node.node_label, vec!["a=1", "b=2", "c=3"]);
        assert_eq!(a.node.node_taint, vec!["t=1:NoSchedule"]);
        // Lexical order of file names, not numeric; .yml files count, .txt files do not.
        assert_eq!(a.node.cluster_domain, "nine.local");
        assert!(a.disable_agent);
        assert_eq!(a.config, path);
        // Without the main file (and not named explicitly) the drop-ins still apply.
        std::fs::remove_file(&path).unwrap();
        let args = config_args(&path, false).unwrap();
        assert!(
            args.contains(&"--https-listen-port=8443".to_string()),
            "{args:?}"
        );
        assert!(args.contains(&"--node-label=b=2".to_string()), "{args:?}");
        assert!(config_args(&path, true).is_err());
    }

    #[test]
    fn config_flags_win_over_drop_ins() {
        let (_dir, path) = drop_in_fixture();
        let p = path.to_str().unwrap();
        let a = server_args(&[
            "kinglet",
            "server",
            &format!("--config={p}"),
            "--https-listen-port=6000",
            "--cluster-domain",
            "cli.local",
        ]);
        assert_eq!(a.https_listen_port, 6000);
        assert_eq!(a.node.cluster_domain, "cli.local");
        assert_eq!(a.node.node_label, vec!["a=1", "b=2", "c=3"]);
    }

    #[test]
    fn config_drop_ins_apply_to_the_agent() {
        let (dir, path) = drop_in_fixture();
        // Server-only keys would be rejected by the agent: give it its own files.
        std::fs::write(&path, "server: https://10.0.0.1:6443\nnode-label: [a=1]\n").unwrap();
        let d = dir.path().join("config.yaml.d");
        for f in ["10-a.yaml", "20-b.yaml", "30-c.yml"] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
        std::fs::write(d.join("10-a.yaml"), "node-label+: [b=2]\nnode-name: file\n").unwrap();
        let argv = merged_argv(
            [
                "kinglet",
                "agent",
                "--config",
                path.to_str().unwrap(),
                "--node-name",
                "cli",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
        )
        .unwrap();
        let Command::Agent(a) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("not the agent command")
        };
        assert_eq!(a.server, "https://10.0.0.1:6443");
        assert_eq!(a.node.node_label, vec!["a=1", "b=2"]);
        assert_eq!(a.node.node_name.as_deref(), Some("cli"));
        assert_eq!(a.node.cluster_domain, "nine.local");
        // Other commands never read a config file.
        let argv: Vec<String> = ["kinglet", "images", "ls"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(merged_argv(argv.clone()).unwrap(), argv);
    }

    #[test]
    fn config_bad_drop_in_is_a_one_line_error_naming_it() {
        let (dir, path) = drop_in_fixture();
        let d = dir.path().join("config.yaml.d");
        let bad = d.join("20-b.yaml");
        for text in [
            "tls-san: [unclosed\nx: : y\n",
            "- a list\n",
            "\t: tab\n",
            "[1]: x\n",
        ] {
            std::fs::write(&bad, text).unwrap();
            let err = config_args(&path, true).unwrap_err().to_string();
            assert!(err.contains(&bad.display().to_string()), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{text:?}: {err}");
        }
        std::fs::write(&bad, "https-listen-port: 1\n").unwrap();
        // An unreadable drop-in (here a directory) is an error naming it.
        let unreadable = d.join("50-dir.yaml");
        std::fs::create_dir(&unreadable).unwrap();
        let err = config_args(&path, true).unwrap_err().to_string();
        assert!(err.contains("50-dir.yaml"), "{err}");
        std::fs::remove_dir(&unreadable).unwrap();
        // Bad YAML in the main file too.
        std::fs::write(&path, "a: [\n").unwrap();
        let err = config_args(&path, false).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && !err.contains('\n'),
            "{err}"
        );
        // Not UTF-8.
        std::fs::write(&path, b"a: \xff\xfe\n").unwrap();
        let err = config_args(&path, false).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && !err.contains('\n'),
            "{err}"
        );
        // Through the real entry point, too: an error, not a panic or an exit.
        assert!(
            merged_argv(vec![
                "kinglet".into(),
                "server".into(),
                format!("--config={}", path.display()),
            ])
            .is_err()
        );
    }

    #[test]
    fn config_examples_parse() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/config.yaml");
        assert!(drop_in_dir(&path).join("10-example.yaml").is_file());
        let a = server_args(&["kinglet", "server", "--config", path.to_str().unwrap()]);
        assert_eq!(a.tls_san, vec!["kinglet.example.internal"]);
    }
}
