//! `kinglet server`: wires the PKI, the store and the API server together and serves HTTPS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

mod datastore;
mod manifests;

use crate::cli::ServerArgs;
use kinglet_apiserver::{Api, ApiConfig};
use kinglet_pki::{Pki, tls};
use kinglet_store::Store;

/// The host's addresses (non-loopback first), for certificates and the advertised address.
fn host_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|sa| {
                    sa.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                })
                .filter(|ip| {
                    !ip.is_loopback()
                        && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|ip| !ip.is_ipv4());
    out.dedup();
    out
}

/// Logs to stderr: `RUST_LOG` if set, else info (debug with `--debug`, the HTTP and TLS
/// libraries kept at info).
pub(crate) fn init_logging(debug: bool) {
    // kube-rs's HTTP layer logs each failed request at ERROR, several a second while an agent
    // is cut off from its server; the callers report what failed, once.
    let filter = if debug {
        "debug,hyper=info,rustls=info,h2=info,kube_client::client::builder=off"
    } else {
        "info,kube_client::client::builder=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(args.debug);
    // Bad `--datastore-*`, `--token` or `--server` combinations stop the start at once.
    args.datastore()?;
    // A bad registries.yaml stops the start before anything is set up.
    if !args.disable_agent {
        args.node.registries()?;
    }
    // One server per data directory: two would interleave writes to one SQLite log and fight
    // over the controllers' lease. Held until the process ends.
    let server_dir = args.data_dir.join("server");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("creating {}", server_dir.display()))?;
    let _alone = kinglet_core::lockfile::hold_alone(
        &server_dir.join("lock"),
        &format!("data directory {}", args.data_dir.display()),
    )?;
    if let Some(archive) = &args.restore {
        crate::backup::restore(archive, &args.data_dir)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let node_ports = args.node_port_range()?;
    let mode = args.kubeconfig_mode()?;
    let addresses = host_addresses();
    let advertise = args
        .advertise_address
        .or_else(|| addresses.first().copied())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let hostname = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let service_net = kinglet_apiserver::service_network(&args.node.service_cidr)?;
    let cluster_cidr = crate::cli::ipv4_net("--cluster-cidr", &args.node.cluster_cidr)?;
    let service_cidr = crate::cli::ipv4_net("--service-cidr", &args.node.service_cidr)?;
    // The host is not ours: refuse another Kubernetes network, or ranges that overlap its own.
    if !args.disable_agent {
        kinglet_network::host_check::refuse_foreign(&args.host_check()?).await?;
    }
    let mut all_addrs = addresses.clone();
    all_addrs.push(advertise);
    if !args.bind_address.is_unspecified() {
        all_addrs.push(args.bind_address);
    }
    let sans = kinglet_pki::serving_sans(
        &hostname,
        &all_addrs,
        &args.tls_san,
        service_net,
        &args.node.cluster_domain,
    );
    let default_db = args.data_dir.join("server").join("db").join("state.db");
    let store = Store::connect(&args.datastore()?, &default_db)
        .await
        .context("opening the datastore")?;
    // Servers sharing a datastore must agree on the cluster's ranges and names.
    let settings = [
        ("cluster-cidr", cluster_cidr.to_string()),
        ("service-cidr", service_cidr.to_string()),
        ("cluster-domain", args.node.cluster_domain.clone()),
        ("cluster-dns", args.cluster_dns()?.to_string()),
        (
            "service-node-port-range",
            format!("{}-{}", node_ports.0, node_ports.1),
        ),
    ];
    datastore::check_settings(&store, &settings).await?;
    // The cluster's shared files come from the datastore before the PKI loads, when other
    // servers share it.
    let token = args.server_token()?;
    datastore::sync(
        &store,
        &datastore::Start {
            data_dir: &args.data_dir,
            token: token.as_deref(),
            server: args.server.as_deref(),
            secrets_encryption: args.secrets_encryption,
        },
    )
    .await?;
    // Recorded once the bootstrap data is there: a server failing before records nothing.
    datastore::record_settings(&store, &settings).await?;
    let pki = Pki::load_or_create(&args.data_dir, &sans).context("setting up the cluster PKI")?;
    let token_path = kinglet_apiserver::join::token_path(&args.data_dir);
    kinglet_apiserver::join::ensure_secret(&token_path).context("setting up the server token")?;
    store.spawn_compactor(Duration::from_secs(args.compaction_interval.max(1)));
    // Scheduled snapshots copy the data directory's SQLite database.
    if store.sqlite_path() == Some(default_db.as_path()) {
        if let Some(snapshots) = crate::backup::Schedule::new(
            &args.snapshot_schedule,
            args.snapshot_retention,
            args.snapshot_dir.as_deref(),
            &args.data_dir,
            args.node.node_name.as_deref(),
        )? {
            snapshots.spawn();
        }
    } else if !args.snapshot_schedule.is_empty() {
        tracing::info!(
            "no scheduled snapshots: they cover the data directory's SQLite datastore only"
        );
    }
    let config = ApiConfig {
        advertise_address: advertise,
        port: args.https_listen_port,
        service_cidr: args.node.service_cidr.clone(),
        cluster_domain: args.node.cluster_domain.clone(),
        cluster_dns: args.cluster_dns()?,
        node_port_range: node_ports,
    };
    let encryption = crate::secrets_encrypt::server_config(&args.data_dir, args.secrets_encryption)
        .context("setting up secrets encryption")?;
    let store = kinglet_apiserver::encryption::Storage::new(store, encryption);
    let api = Api::new(store, config, &pki.sa_key_pem)
        .await
        .context("starting the API server")?;
    let bind = SocketAddr::new(args.bind_address, args.https_listen_port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("listening on {bind}"))?;
    // Renewed while running too (`crate::certificate::spawn_renewal`).
    let live = kinglet_pki::renew::LiveCerts::new(&pki)?;
    let tls_config = tls::server_config(&pki, live.serving.clone())?;
    let local = if args.bind_address.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        args.bind_address
    };
    let url = format!("https://{}", SocketAddr::new(local, args.https_listen_port));
    pki.write_kubeconfig(&args.write_kubeconfig, &url, mode)
        .with_context(|| format!("writing {}", args.write_kubeconfig.display()))?;
    tracing::info!(%bind, kubeconfig = %args.write_kubeconfig.display(), "kinglet API server ready");
    let kubelet_tls = tls::live_client_config(&pki.ca.cert_pem, live.kubelet_client.clone())?;
    let _ = api
        .kubelet_client
        .set(kinglet_apiserver::node_proxy::KubeletClient {
            tls: Arc::new(kubelet_tls),
        });
    let front_proxy_tls =
        tls::live_client_config(&pki.ca.cert_pem, live.front_proxy_client.clone())?;
    let _ = api.front_proxy.set(kinglet_apiserver::FrontProxy {
        tls: Arc::new(front_proxy_tls),
        ca_pem: pki.front_proxy_ca.cert_pem.clone(),
    });
    // The server's own node: no agent may join under its name.
    let own_node = match args.disable_agent {
        true => None,
        false => Some(args.node_config(advertise)?.node_name),
    };
    let _ = api.join.set(kinglet_apiserver::join::JoinConfig {
        ca: pki.ca.clone(),
        token_path,
        cluster: kinglet_core::join::ClusterSettings {
            cluster_cidr: cluster_cidr.to_string(),
            service_cidr: service_cidr.to_string(),
            cluster_dns: args.cluster_dns()?,
            cluster_domain: args.node.cluster_domain.clone(),
        },
        server_node: own_node.clone(),
        // What clients reach the API server by: all its names, but of its addresses only the
        // advertised and bound ones (and --tls-san's), so an agent may run beside a
        // `--disable-agent` server at the host's other addresses.
        api_server_sans: kinglet_pki::serving_sans(
            &hostname,
            &[
                Some(advertise),
                Some(args.bind_address).filter(|a| !a.is_unspecified()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
            &args.tls_san,
            service_net,
            &args.node.cluster_domain,
        ),
    });
    if !args.disable_agent {
        let mut cfg = args.node_config(advertise)?;
        // Before the join endpoints are served: the name has its password Secret first.
        kinglet_apiserver::join::reserve_node_name(&api, &cfg.node_name)
            .await
            .context("reserving the server's node name")?;
        let mut sans = vec![rcgen::SanType::DnsName(cfg.node_name.clone().try_into()?)];
        sans.push(rcgen::SanType::IpAddress(cfg.node_ip));
        cfg.serving = Some(kinglet_kubelet::Serving {
            cert: kinglet_pki::issue(&pki.ca, &cfg.node_name, &[], &sans, true, false)?,
            ca_pem: pki.ca.cert_pem.clone(),
        });
        // The node acts with its own node credentials, as an agent on another machine would.
        let node_user = kinglet_apiserver::authz::node::node_user(&cfg.node_name);
        tokio::spawn(kinglet_control::roles::mark_control_plane(
            api.local_client(),
            cfg.node_name.clone(),
        ));
        // No offline copy (`cfg.offline_copy` stays false): its own API server is in-process,
        // it is never unreachable.
        let options = NodeOptions {
            vxlan_iface: args.node.vxlan_iface.clone(),
        };
        start_node(api.local_client_as(node_user, "kubelet"), cfg, options);
    }
    // One CA signs both the client certificates the API server trusts and the kubelets'
    // serving certificates, so it is every signer's CA.
    kinglet_control::controllers::start(
        api.clone(),
        pki.ca.cert_pem.clone(),
        cluster_cidr,
        pki.ca.clone(),
        args.local_storage_path()?,
    );
    manifests::spawn(api.local_client(), &args.data_dir);
    crate::certificate::spawn_renewal(crate::certificate::Renewal {
        live,
        pki,
        data_dir: args.data_dir.clone(),
        sans,
        kubeconfig: args.write_kubeconfig.clone(),
        url,
        mode,
    });
    // systemd's Type=notify: ready once this server's node is Ready (the listener is bound).
    tokio::spawn(crate::notify::when_ready(
        api.local_client(),
        own_node,
        None,
    ));
    let router = api.router();
    tokio::select! {
        r = tls::serve(listener, Arc::new(tls_config), router) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            // Other servers sharing the datastore stop sending clients here.
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                kinglet_apiserver::withdraw_endpoints(&api),
            )
            .await;
            Ok(())
        }
    }
}

/// `kinglet cleanup`: undoes the node's network set-up.
pub fn cleanup(args: &crate::cli::CleanupArgs) -> anyhow::Result<()> {
    let cluster = crate::cli::ipv4_net("--cluster-cidr", &args.cluster_cidr)?;
    let services = crate::cli::ipv4_net("--service-cidr", &args.service_cidr)?;
    kinglet_network::proxy::cleanup()?;
    kinglet_network::netpol::cleanup()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        kinglet_network::cleanup(cluster, services, &args.run_dir).await?;
        kinglet_network::overlay::teardown().await?;
        let dns = args
            .cluster_dns
            .unwrap_or_else(|| crate::cli::default_cluster_dns(services));
        kinglet_network::release_address(kinglet_network::dns::LINK, dns).await
    })
}

/// How a node runs beyond its `NodeConfig`.
pub(crate) struct NodeOptions {
    /// The VXLAN overlay's underlay interface (`--vxlan-iface`).
    pub vxlan_iface: Option<String>,
}

/// The node's parts: kubelet, service proxy, network policies, cluster DNS and the VXLAN
/// overlay to other nodes.
pub(crate) fn start_node(
    client: kube::Client,
    cfg: kinglet_kubelet::NodeConfig,
    options: NodeOptions,
) {
    let proxy = kinglet_network::proxy::Config {
        node_name: cfg.node_name.clone(),
        cluster_cidr: cfg.cluster_cidr,
        local_service_ips: vec![cfg.cluster_dns],
    };
    let dns = kinglet_network::dns::Config {
        address: cfg.cluster_dns,
        domain: cfg.cluster_domain.clone(),
        resolv_conf: cfg.resolv_conf.clone(),
        ranges: vec![cfg.service_cidr, cfg.cluster_cidr],
    };
    // One watch of Services and EndpointSlices for the proxy and the DNS, and one of the
    // node's pods for the kubelet and the proxy.
    // With `cfg.offline_copy` (an agent's), kept on disk to start from while the server is
    // unreachable.
    let copy = cfg
        .offline_copy
        .then(|| kinglet_kubelet::cache_dir(&cfg.data_dir));
    let services = kinglet_network::services::ServiceWatch::start(client.clone(), copy.as_deref());
    let node_pods = kinglet_core::informers::pods_on_node(&client, &cfg.node_name, copy.as_deref());
    let (s, p) = (services.clone(), node_pods.clone());
    tokio::spawn(async move {
        if let Err(e) = kinglet_network::proxy::run(s, p, proxy).await {
            tracing::error!("service proxy: {e:#}");
        }
    });
    let overlay = kinglet_network::overlay::watch::Config {
        node_name: cfg.node_name.clone(),
        node_ip: cfg.node_ip,
        cluster_cidr: cfg.cluster_cidr,
        iface: options.vxlan_iface,
        cache: copy.clone(),
    };
    tokio::spawn(kinglet_network::overlay::watch::run(
        client.clone(),
        overlay,
    ));
    let (c, node) = (client.clone(), cfg.node_name.clone());
    tokio::spawn(async move {
        if let Err(e) = kinglet_network::netpol::run(c, node).await {
            tracing::error!("network policies: {e:#}");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = kinglet_network::dns::run(services, dns).await {
            tracing::error!("cluster DNS: {e:#}");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = kinglet_kubelet::run(client, cfg, node_pods).await {
            tracing::error!("node: {e:#}");
        }
    });
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
