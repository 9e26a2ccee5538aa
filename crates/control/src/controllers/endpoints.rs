//! Endpoints and EndpointSlice controllers: for every Service with a selector, the addresses
//! of its pods (ready ones in `addresses`, others in `notReadyAddresses`; slices also list
//! terminating pods so proxies can drain them). One debounced sync over all Services handles
//! creates, changes and deletions alike.

use super::informers::{Informers, MEDIUM_BUFFER, Shared};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::util::{controller_ref, is_ready, is_terminal};

const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The pod's port number for a service port's targetPort (numbers, or container port names).
fn target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match sp.target_port.as_ref() {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP")
                        == sp.protocol.as_deref().unwrap_or("TCP")
            })
            .map(|p| p.container_port),
    }
}

fn selected(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    let labels = pod.labels();
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}

fn target_ref(p: &Pod) -> Value {
    json!({"kind": "Pod", "name": p.name_any(), "namespace": p.namespace(), "uid": p.uid()})
}

fn publishes_not_ready(svc: &Service) -> bool {
    (svc.spec.as_ref())
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// Upstream's `ShouldSetHostname`: a pod named by the Service (StatefulSet pods: subdomain =
/// service) gets a DNS name.
fn hostname(svc: &Service, p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str()) && p.namespace() == svc.namespace())
        .then(|| spec.hostname.clone())
        .flatten()
        .filter(|h| !h.is_empty())
}

/// The Endpoints object a Service should have (upstream groups pods by identical port sets).
/// Terminating pods are left out unless the Service publishes not-ready addresses, which puts
/// every pod among the ready ones.
fn desired_endpoints(svc: &Service, pods: &[&Pod]) -> Value {
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let publish = publishes_not_ready(svc);
    // A headless Service without ports still lists its pods; others need a port.
    let portless_ok = ports.is_empty() && spec.cluster_ip.as_deref() == Some("None");
    // port set -> (ready addresses, not-ready addresses, ports)
    type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    let mut members: Vec<&&Pod> = pods
        .iter()
        .filter(|p| publish || p.metadata.deletion_timestamp.is_none())
        .collect();
    members.sort_by_key(|p| pod_ip(p));
    for p in members {
        let Some(ip) = pod_ip(p) else { continue };
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|sp| target_port(sp, p).map(|tp| json!({"name": sp.name, "port": tp, "protocol": sp.protocol.clone().unwrap_or_else(|| "TCP".into())})))
            .collect();
        if resolved.is_empty() && !portless_ok {
            continue;
        }
        let key = serde_json::to_string(&resolved).unwrap_or_default();
        let mut addr = json!({"ip": ip, "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()), "targetRef": target_ref(p)});
        if let Some(h) = hostname(svc, p) {
            addr["hostname"] = json!(h);
        }
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (Vec::new(), Vec::new(), resolved));
        if publish || is_ready(p) {
            entry.0.push(addr)
        } else {
            entry.1.push(addr)
        }
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ready, not_ready, ports)| {
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let mut ep = json!({"metadata": {"name": svc.name_any(), "namespace": svc.namespace(), "labels": svc.labels()}});
    if !subsets.is_empty() {
        ep["subsets"] = json!(subsets);
    }
    ep
}

/// The one EndpointSlice a Service should have: every pod with an IP, terminating ones marked
/// so proxies can drain them (upstream's `podToEndpoint` conditions).
fn desired_slice(svc: &Service, pods: &[&Pod]) -> Value {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let first = pods.first();
    let publish = publishes_not_ready(svc);
    let slice_ports: Vec<Value> = ports
        .iter()
        .map(|sp| {
            let port = first.and_then(|p| target_port(sp, p)).or(match &sp.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                None => Some(sp.port),
                _ => None,
            });
            json!({"name": sp.name.clone().unwrap_or_default(), "port": port, "protocol": sp.protocol.clone().unwrap_or_else(|| "TCP".into())})
        })
        .collect();
    let mut members: Vec<&&Pod> = pods.iter().collect();
    members.sort_by_key(|p| pod_ip(p));
    let endpoints: Vec<Value> = members
        .iter()
        .filter_map(|p| {
            let ip = pod_ip(p)?;
            let terminating = p.metadata.deletion_timestamp.is_some();
            let serving = publish || is_ready(p);
            let mut e = json!({
                "addresses": [ip],
                "conditions": {"ready": publish || (serving && !terminating), "serving": serving, "terminating": terminating},
                "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()),
                "targetRef": target_ref(p),
            });
            if let Some(h) = hostname(svc, p) {
                e["hostname"] = json!(h);
            }
            Some(e)
        })
        .collect();
    let mut labels = svc.labels().clone();
    labels.insert(SERVICE_NAME.into(), svc.name_any());
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        MANAGED_BY.into(),
    );
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"generateName": format!("{}-", svc.name_any()), "namespace": svc.namespace(), "labels": labels, "ownerReferences": [controller_ref(svc)]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": slice_ports,
    })
}

/// `v` as the API would store it: through its typed form, so absent and null agree.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Value {
    serde_json::from_value::<T>(v.clone())
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(v)
}

struct Stores {
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    slices: Store<EndpointSlice>,
}

/// The comparable content of an object (no server-set metadata).
fn content(v: &Value, fields: &[&str]) -> Value {
    let mut out = json!({"labels": v.pointer("/metadata/labels").cloned().unwrap_or(json!({}))});
    for f in fields {
        out[*f] = v.get(*f).cloned().unwrap_or(Value::Null);
    }
    out
}

/// One API action of an endpoints sync.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    CreateEndpoints(Box<Endpoints>),
    /// Replace the Endpoints (its resourceVersion set to the one seen).
    ReplaceEndpoints(Box<Endpoints>),
    DeleteEndpoints {
        namespace: String,
        name: String,
    },
    CreateSlice(Box<EndpointSlice>),
    /// Replace the slice (its name and resourceVersion set to the one seen).
    ReplaceSlice(Box<EndpointSlice>),
    DeleteSlice {
        namespace: String,
        name: String,
    },
}

type Key = (String, String);

fn key_of<K: kube::Resource>(o: &K) -> Key {
    let meta = o.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn has_selector(svc: &Service) -> bool {
    (svc.spec.as_ref())
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

/// What the Endpoints of one Service need: created, replaced, or nothing.
fn endpoints_step(want: Value, have: Option<&Endpoints>) -> Option<Step> {
    let have_v = have.and_then(|h| serde_json::to_value(h).ok());
    if have_v.as_ref().map(|h| content(h, &["subsets"])) == Some(content(&want, &["subsets"])) {
        return None;
    }
    let mut obj: Endpoints = serde_json::from_value(want).ok()?;
    Some(match have {
        Some(h) => {
            obj.metadata.resource_version = h.resource_version();
            Step::ReplaceEndpoints(Box::new(obj))
        }
        None => Step::CreateEndpoints(Box::new(obj)),
    })
}

/// What the managed slices of one Service need: one, up to date, and no others.
fn slice_steps(want: Value, mine: &[&EndpointSlice]) -> Vec<Step> {
    let fields = ["endpoints", "ports", "addressType"];
    let Some(have) = mine.first() else {
        return serde_json::from_value(want)
            .map(|o| vec![Step::CreateSlice(Box::new(o))])
            .unwrap_or_default();
    };
    let mut steps = Vec::new();
    let have_v = serde_json::to_value(have).unwrap_or_default();
    if content(&have_v, &fields) != content(&want, &fields)
        && let Ok(mut obj) = serde_json::from_value::<EndpointSlice>(want)
    {
        obj.metadata.name = Some(have.name_any());
        obj.metadata.generate_name = None;
        obj.metadata.resource_version = have.resource_version();
        steps.push(Step::ReplaceSlice(Box::new(obj)));
    }
    steps.extend(mine[1..].iter().map(|extra| {
        let (namespace, name) = key_of(*extra);
        Step::DeleteSlice { namespace, name }
    }));
    steps
}

/// Decides one sync of every Service's Endpoints and EndpointSlice from the caches.
fn plan(
    services: &[&Service],
    pods: &[&Pod],
    endpoints: &[&Endpoints],
    slices: &[&EndpointSlice],
) -> Vec<Step> {
    let mut pods_by_ns: HashMap<String, Vec<&Pod>> = HashMap::new();
    for p in pods {
        pods_by_ns
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let endpoints: BTreeMap<Key, &Endpoints> = endpoints.iter().map(|e| (key_of(*e), *e)).collect();
    let mut slices_by_svc: HashMap<Key, Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let managed = s
            .labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str);
        if let (Some(svc), Some(MANAGED_BY)) = (s.labels().get(SERVICE_NAME), managed) {
            slices_by_svc
                .entry((s.namespace().unwrap_or_default(), svc.clone()))
                .or_default()
                .push(s);
        }
    }
    let mut wanted: Vec<&Service> = (services.iter().copied())
        .filter(|svc| has_selector(svc) && svc.metadata.deletion_timestamp.is_none())
        .collect();
    wanted.sort_by_key(|svc| key_of(*svc));
    let mut steps = Vec::new();
    for svc in &wanted {
        let key = key_of(*svc);
        let members: Vec<&Pod> = (pods_by_ns.get(&key.0).into_iter().flatten().copied())
            .filter(|p| !is_terminal(p) && selected(svc, p))
            .collect();
        let want = typed::<Endpoints>(desired_endpoints(svc, &members));
        steps.extend(endpoints_step(want, endpoints.get(&key).copied()));
    }
    // Endpoints of selector-less Services are the user's; only ours for deleted Services go.
    let existing: HashSet<Key> = services.iter().map(|s| key_of(*s)).collect();
    for ((namespace, name), e) in &endpoints {
        let ours = !e
            .labels()
            .contains_key("endpointslice.kubernetes.io/skip-mirror")
            && name != "kubernetes";
        if ours && !existing.contains(&(namespace.clone(), name.clone())) {
            steps.push(Step::DeleteEndpoints {
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
    }
    // EndpointSlices: one managed slice per Service (the GC removes those of deleted Services).
    for svc in &wanted {
        let key = key_of(*svc);
        let members: Vec<&Pod> = (pods_by_ns.get(&key.0).into_iter().flatten().copied())
            .filter(|p| !is_terminal(p) && selected(svc, p))
            .collect();
        let want = typed::<EndpointSlice>(desired_slice(svc, &members));
        steps.extend(slice_steps(
            want,
            slices_by_svc
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ));
    }
    steps
}

/// Performs `steps`; failures are logged and left for the next sync.
async fn apply(clients: &Clients, steps: Vec<Step>) {
    let (endpoints, slices) = (&clients.endpoints, &clients.slices);
    for step in steps {
        let result = match &step {
            Step::CreateEndpoints(o) => endpoints_api(endpoints, o.as_ref())
                .create(&PostParams::default(), o)
                .await
                .map(|_| ()),
            Step::ReplaceEndpoints(o) => endpoints_api(endpoints, o.as_ref())
                .replace(&o.name_any(), &PostParams::default(), o)
                .await
                .map(|_| ()),
            Step::DeleteEndpoints { namespace, name } => {
                Api::<Endpoints>::namespaced(endpoints.clone(), namespace)
                    .delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
            Step::CreateSlice(o) => slices_api(slices, o.as_ref())
                .create(&PostParams::default(), o)
                .await
                .map(|_| ()),
            Step::ReplaceSlice(o) => slices_api(slices, o.as_ref())
                .replace(&o.name_any(), &PostParams::default(), o)
                .await
                .map(|_| ()),
            Step::DeleteSlice { namespace, name } => {
                Api::<EndpointSlice>::namespaced(slices.clone(), namespace)
                    .delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::debug!("endpoints sync {step:?}: {e}");
        }
    }
}

fn endpoints_api(client: &kube::Client, o: &Endpoints) -> Api<Endpoints> {
    Api::namespaced(client.clone(), &o.namespace().unwrap_or_default())
}

fn slices_api(client: &kube::Client, o: &EndpointSlice) -> Api<EndpointSlice> {
    Api::namespaced(client.clone(), &o.namespace().unwrap_or_default())
}

async fn sync(clients: &Clients, st: &Stores) {
    let (services, pods) = (st.services.state(), st.pods.state());
    let (endpoints, slices) = (st.endpoints.state(), st.slices.state());
    let steps = plan(
        &services.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
        &pods.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
        &endpoints.iter().map(|e| e.as_ref()).collect::<Vec<_>>(),
        &slices.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
    );
    apply(clients, steps).await;
}

/// The clients of the two controllers this loop is: the caches watch as the controller
/// manager (upstream's shared informers); Endpoints are written as `endpoint-controller`,
/// EndpointSlices as `endpointslice-controller`.
pub struct Clients {
    pub reader: kube::Client,
    pub endpoints: kube::Client,
    pub slices: kube::Client,
}

pub async fn run(clients: Clients, informers: Arc<Informers>) {
    let wake = Arc::new(Notify::new());
    // Endpoints and slices only this loop reads; Services and pods from the shared caches.
    let (endpoints, e) = Shared::<Endpoints>::start_with(&clients.reader, MEDIUM_BUFFER);
    let (slices, s) = Shared::<EndpointSlice>::start_with(&clients.reader, MEDIUM_BUFFER);
    // The caches' watches stop when this loop stops (leadership lost), as bare handles would not.
    let _watches = (AbortOnDropHandle::new(e), AbortOnDropHandle::new(s));
    informers.services.wake_on_change(wake.clone());
    endpoints.wake_on_change(wake.clone());
    slices.wake_on_change(wake.clone());
    informers.pods.wake_on_change(wake.clone());
    informers.services.synced().await;
    endpoints.synced().await;
    slices.synced().await;
    informers.pods.synced().await;
    let st = Stores {
        services: informers.services.store(),
        pods: informers.pods.store(),
        endpoints: endpoints.store(),
        slices: slices.store(),
    };
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(30), wake.notified()).await;
        // Let a burst of changes settle into one sync.
        tokio::time::sleep(Duration::from_millis(50)).await;
        sync(&clients, &st).await;
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged};

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        crate::controllers::util::testing::typed(v)
    }

    /// Service `web` selecting app=web, port 80 to the pods' port named "http", plus `patch`.
    fn service(patch: Value) -> Service {
        let base = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "s1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
        });
        obj(merged(base, patch))
    }

    /// Pod `name` labelled app=web at `ip`, serving "http" on 8080, Running and Ready, plus `patch`.
    fn pod(name: &str, ip: &str, patch: Value) -> Pod {
        let base = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        });
        obj(merged(base, patch))
    }

    fn not_ready() -> Value {
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    }
    fn terminating() -> Value {
        json!({"metadata": {"deletionTimestamp": ago(1)}})
    }

    /// The Endpoints' subsets as "port: ready IPs | not-ready IPs", with hostnames as ip=host.
    fn subsets(ep: &Value) -> Vec<String> {
        let ips = |v: &Value| -> String {
            (v.as_array().into_iter().flatten())
                .map(|a| match a["hostname"].as_str() {
                    Some(h) => format!("{}={h}", a["ip"].as_str().unwrap_or("")),
                    None => a["ip"].as_str().unwrap_or("").to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        (ep["subsets"].as_array().into_iter().flatten())
            .map(|s| {
                let ports: Vec<String> = (s["ports"].as_array().into_iter().flatten())
                    .map(|p| p["port"].to_string())
                    .collect();
                format!(
                    "{}: {} | {}",
                    ports.join(","),
                    ips(&s["addresses"]),
                    ips(&s["notReadyAddresses"])
                )
            })
            .collect()
    }

    #[test]
    fn endpoints_content() {
        let publish = json!({"spec": {"publishNotReadyAddresses": true}});
        let headless_portless = json!({"spec": {"clusterIP": "None", "ports": null}});
        let other_port = json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 9090}]}]}});
        // (case, Service patch, pods, subsets)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, Vec<&str>)> = vec![
            ("ready pods are addresses, by IP", json!({}), vec![pod("b", "10.0.0.2", json!({})), pod("a", "10.0.0.1", json!({}))], vec!["8080: 10.0.0.1,10.0.0.2 | "]),
            ("not-ready pods apart", json!({}), vec![pod("a", "10.0.0.1", json!({})), pod("b", "10.0.0.2", not_ready())], vec!["8080: 10.0.0.1 | 10.0.0.2"]),
            ("terminating pods are left out", json!({}), vec![pod("a", "10.0.0.1", terminating())], vec![]),
            ("pods without an IP are left out", json!({}), vec![pod("a", "", json!({}))], vec![]),
            ("numeric target port", json!({"spec": {"ports": [{"port": 80, "targetPort": 9000}]}}), vec![pod("a", "10.0.0.1", json!({}))], vec!["9000: 10.0.0.1 | "]),
            ("no target port: the port", json!({"spec": {"ports": [{"port": 80}]}}), vec![pod("a", "10.0.0.1", json!({}))], vec!["80: 10.0.0.1 | "]),
            ("a named port resolves per pod", json!({}), vec![pod("a", "10.0.0.1", json!({})), pod("b", "10.0.0.2", other_port)], vec!["8080: 10.0.0.1 | ", "9090: 10.0.0.2 | "]),
            ("a pod without the named port is left out", json!({}), vec![pod("a", "10.0.0.1", json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}))], vec![]),
            // Upstream: publishNotReadyAddresses makes every pod, terminating ones too, an address.
            ("publishNotReadyAddresses", publish, vec![pod("a", "10.0.0.1", not_ready()), pod("b", "10.0.0.2", terminating())], vec!["8080: 10.0.0.1,10.0.0.2 | "]),
            // Upstream gives pods of the Service's subdomain their hostname; kinglet did not.
            ("hostnames of the subdomain", json!({}), vec![pod("a", "10.0.0.1", json!({"spec": {"hostname": "db-0", "subdomain": "web"}})), pod("b", "10.0.0.2", json!({"spec": {"hostname": "x", "subdomain": "other"}}))],
                vec!["8080: 10.0.0.1=db-0,10.0.0.2 | "]),
            ("headless without ports lists its pods", headless_portless, vec![pod("a", "10.0.0.1", json!({}))], vec![": 10.0.0.1 | "]),
            // Upstream lists no pods for a Service with neither ports nor clusterIP None.
            ("without ports and not headless: none", json!({"spec": {"ports": null}}), vec![pod("a", "10.0.0.1", json!({}))], vec![]),
        ];
        let mut table = Table::default();
        for (case, patch, pods, want) in cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let got = subsets(&typed::<Endpoints>(desired_endpoints(
                &service(patch),
                &refs,
            )));
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, got, want);
        }
        table.done();
    }

    #[test]
    fn slice_conditions() {
        let publish = json!({"spec": {"publishNotReadyAddresses": true}});
        // (case, Service patch, pod patch, (ready, serving, terminating))
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Value, (bool, bool, bool))> = vec![
            ("ready", json!({}), json!({}), (true, true, false)),
            ("not ready", json!({}), not_ready(), (false, false, false)),
            ("terminating: serving until it stops", json!({}), terminating(), (false, true, true)),
            ("terminating and not ready", json!({}), merged(terminating(), not_ready()), (false, false, true)),
            ("publishNotReadyAddresses: not ready is ready", publish.clone(), not_ready(), (true, true, false)),
            // Upstream keeps ready true for terminating pods of such Services; kinglet made it false.
            ("publishNotReadyAddresses: terminating is ready too", publish, terminating(), (true, true, true)),
        ];
        let mut table = Table::default();
        for (case, svc_patch, pod_patch, want) in cases {
            let p = pod("a", "10.0.0.1", pod_patch);
            let slice = desired_slice(&service(svc_patch), &[&p]);
            let c = &slice["endpoints"][0]["conditions"];
            let got = (
                c["ready"].as_bool(),
                c["serving"].as_bool(),
                c["terminating"].as_bool(),
            );
            table.check(case, got, (Some(want.0), Some(want.1), Some(want.2)));
        }
        table.done();
        // Ports resolve against the first pod; endpoints are sorted by IP and carry hostnames.
        let (a, b) = (
            pod(
                "a",
                "10.0.0.9",
                json!({"spec": {"hostname": "h", "subdomain": "web"}}),
            ),
            pod("b", "10.0.0.1", json!({})),
        );
        let slice = desired_slice(&service(json!({})), &[&a, &b]);
        assert_eq!(slice["ports"][0]["port"], json!(8080));
        assert_eq!(slice["endpoints"][0]["addresses"][0], json!("10.0.0.1"));
        assert_eq!(slice["endpoints"][1]["hostname"], json!("h"));
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        (steps.iter())
            .map(|s| match s {
                Step::CreateEndpoints(o) => format!("create endpoints {}", o.name_any()),
                Step::ReplaceEndpoints(o) => format!("replace endpoints {}", o.name_any()),
                Step::DeleteEndpoints { name, .. } => format!("delete endpoints {name}"),
                Step::CreateSlice(o) => format!(
                    "create slice for {}",
                    o.labels().get(SERVICE_NAME).cloned().unwrap_or_default()
                ),
                Step::ReplaceSlice(o) => format!("replace slice {}", o.name_any()),
                Step::DeleteSlice { name, .. } => format!("delete slice {name}"),
            })
            .collect()
    }

    /// What a first sync of `svc` and `pods` would create, as stored objects (named, versioned).
    fn stored(svc: &Service, pods: &[&Pod]) -> (Endpoints, EndpointSlice) {
        let steps = plan(&[svc], pods, &[], &[]);
        let mut ep = None;
        let mut slice = None;
        for s in steps {
            match s {
                Step::CreateEndpoints(o) => ep = Some(*o),
                Step::CreateSlice(o) => slice = Some(*o),
                _ => {}
            }
        }
        let (mut ep, mut slice) = (ep.expect("endpoints"), slice.expect("slice"));
        ep.metadata.resource_version = Some("1".into());
        slice.metadata.name = Some("web-abcde".into());
        slice.metadata.resource_version = Some("1".into());
        (ep, slice)
    }

    #[test]
    fn sync_actions() {
        let svc = service(json!({}));
        let a = pod("a", "10.0.0.1", json!({}));
        let b = pod("b", "10.0.0.2", json!({}));
        let (ep, slice) = stored(&svc, &[&a]);
        let mut extra = slice.clone();
        extra.metadata.name = Some("web-extra".into());
        let other_ep = |name: &str, labels: Value| -> Endpoints {
            obj(json!({"metadata": {"name": name, "namespace": "default", "labels": labels}}))
        };
        let selectorless =
            service(json!({"metadata": {"name": "manual"}, "spec": {"selector": null}}));
        let manual_ep = other_ep("manual", json!({}));
        let gone_ep = other_ep("gone", json!({}));
        let kubernetes_ep = other_ep("kubernetes", json!({}));
        let deleting = service(json!({"metadata": {"deletionTimestamp": ago(1)}}));
        let mirrored_ep = other_ep(
            "mirrored",
            json!({"endpointslice.kubernetes.io/skip-mirror": "true"}),
        );
        // (case, Services, pods, Endpoints, slices, actions)
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<&Service>, Vec<&Pod>, Vec<&Endpoints>, Vec<&EndpointSlice>, Vec<&str>)> = vec![
            ("a new Service: both made", vec![&svc], vec![&a], vec![], vec![], vec!["create endpoints web", "create slice for web"]),
            ("up to date: nothing", vec![&svc], vec![&a], vec![&ep], vec![&slice], vec![]),
            ("a new pod: both replaced", vec![&svc], vec![&a, &b], vec![&ep], vec![&slice], vec!["replace endpoints web", "replace slice web-abcde"]),
            ("a second managed slice goes", vec![&svc], vec![&a], vec![&ep], vec![&slice, &extra], vec!["delete slice web-extra"]),
            ("the Endpoints of a deleted Service go", vec![], vec![&a], vec![&gone_ep], vec![], vec!["delete endpoints gone"]),
            ("a selector-less Service's Endpoints are the user's", vec![&selectorless], vec![&a], vec![&manual_ep], vec![], vec![]),
            ("the kubernetes Endpoints stay", vec![], vec![], vec![&kubernetes_ep, &mirrored_ep], vec![], vec![]),
            ("a Service being deleted is left alone", vec![&deleting], vec![&a], vec![], vec![], vec![]),
        ];
        let mut table = Table::default();
        for (case, services, pods, eps, slices, want) in cases {
            let got = describe(&plan(&services, &pods, &eps, &slices));
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, got, want);
        }
        table.done();
    }
}
