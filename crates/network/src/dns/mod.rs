//! Cluster DNS, embedded (CoreDNS's job in k3s): every node answers at the `--cluster-dns`
//! address, which it holds on a dummy interface, from the node's watch of Services and
//! EndpointSlices; names outside the cluster are forwarded to the node's upstream resolvers
//! (with a cache).

mod zone;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::{Name, Record};
use hickory_server::resolver::TokioResolver;
use hickory_server::resolver::name_server::TokioConnectionProvider;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use ipnet::Ipv4Net;

use crate::services::ServiceWatch;

use zone::Answer;
pub use zone::Zone;

/// The dummy interface holding the cluster DNS address.
pub const LINK: &str = "kinglet-dns";
/// Changes arriving this close together rebuild the records once.
const BATCH: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct Config {
    pub address: Ipv4Addr,
    pub domain: String,
    /// The node's resolver configuration: where other names are forwarded.
    pub resolv_conf: PathBuf,
    /// Ranges whose reverse lookups are answered here (service and pod ranges).
    pub ranges: Vec<Ipv4Net>,
}

pub async fn run(services: ServiceWatch, cfg: Config) -> anyhow::Result<()> {
    crate::hold_address(LINK, cfg.address)
        .await
        .context("adding the cluster DNS address")?;
    let zone = Arc::new(RwLock::new(Zone::empty(&cfg.domain, cfg.ranges.clone())?));
    let wake = Arc::new(tokio::sync::Notify::new());
    let changes = services.subscribe(wake.clone());
    {
        let zone = zone.clone();
        tokio::spawn(async move {
            loop {
                let changed = changes.changes();
                if !changed.is_empty() {
                    tokio::task::block_in_place(|| {
                        let mut zone = zone.write().unwrap_or_else(|e| e.into_inner());
                        zone.update(changed);
                    });
                }
                wake.notified().await;
                tokio::time::sleep(BATCH).await;
            }
        });
    }
    let handler = Handler {
        zone,
        upstream: upstream(&cfg.resolv_conf),
    };
    let mut server = ServerFuture::new(handler);
    let addr = SocketAddr::from((cfg.address, 53));
    server.register_socket(
        tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding {addr}/udp"))?,
    );
    server.register_listener(
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}/tcp"))?,
        Duration::from_secs(5),
    );
    tracing::info!(%addr, domain = %cfg.domain, "cluster DNS ready");
    server.block_until_done().await?;
    Ok(())
}

/// A caching resolver for the node's upstream servers, or none if it has none usable.
fn upstream(resolv_conf: &std::path::Path) -> Option<TokioResolver> {
    let text = std::fs::read(resolv_conf)
        .map_err(|e| {
            tracing::warn!(
                "reading {}: {e}; names outside the cluster will not resolve",
                resolv_conf.display()
            )
        })
        .ok()?;
    let (config, mut opts) = hickory_server::resolver::system_conf::parse_resolv_conf(text)
        .map_err(|e| {
            tracing::warn!(
                "{}: {e}; names outside the cluster will not resolve",
                resolv_conf.display()
            )
        })
        .ok()?;
    opts.cache_size = 4096;
    opts.timeout = Duration::from_secs(2);
    Some(
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build(),
    )
}

struct Handler {
    zone: Arc<RwLock<Zone>>,
    upstream: Option<TokioResolver>,
}

impl Handler {
    /// (response code, authoritative, answers, authority section) for one question.
    async fn resolve(
        &self,
        name: Name,
        rtype: hickory_server::proto::rr::RecordType,
    ) -> (ResponseCode, bool, Vec<Record>, Vec<Record>) {
        let (answer, soa) = {
            let zone = self.zone.read().unwrap_or_else(|e| e.into_inner());
            let answer = zone.answer(&name, rtype);
            // Negative answers carry the zone's SOA.
            let soa =
                matches!(answer, Answer::NoData | Answer::NxDomain).then(|| zone.soa().clone());
            (answer, soa.into_iter().collect())
        };
        match answer {
            Answer::Records(r) => (ResponseCode::NoError, true, r, vec![]),
            Answer::NoData => (ResponseCode::NoError, true, vec![], soa),
            Answer::NxDomain => (ResponseCode::NXDomain, true, vec![], soa),
            Answer::NotOurs => {
                let Some(up) = &self.upstream else {
                    return (ResponseCode::ServFail, false, vec![], vec![]);
                };
                match up.lookup(name, rtype).await {
                    Ok(l) => (ResponseCode::NoError, false, l.records().to_vec(), vec![]),
                    Err(e) if e.is_nx_domain() => (ResponseCode::NXDomain, false, vec![], vec![]),
                    Err(e) if e.is_no_records_found() => {
                        (ResponseCode::NoError, false, vec![], vec![])
                    }
                    Err(e) => {
                        tracing::debug!("forwarding a DNS query: {e}");
                        (ResponseCode::ServFail, false, vec![], vec![])
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let code =
            if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
                Some(ResponseCode::NotImp)
            } else {
                None
            };
        let query = match (code, request.request_info()) {
            (None, Ok(info)) => Some(info.query.clone()),
            _ => None,
        };
        let Some(query) = query else {
            header.set_response_code(code.unwrap_or(ResponseCode::FormErr));
            let msg = builder.build_no_records(header);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| header.into());
        };
        let (rcode, authoritative, answers, authority) = self
            .resolve(Name::from(query.name()), query.query_type())
            .await;
        header.set_response_code(rcode);
        header.set_authoritative(authoritative);
        let msg = builder.build(
            header,
            answers.iter(),
            std::iter::empty(),
            authority.iter(),
            std::iter::empty(),
        );
        response.send_response(msg).await.unwrap_or_else(|_| {
            let mut h = header;
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        })
    }
}
