//! Endpoints and EndpointSlice controllers: for every Service with a selector, the addresses
//! of its pods (ready ones in `addresses`, others in `notReadyAddresses`; slices also list
//! terminating pods so proxies can drain them). One debounced sync over all Services handles
//! creates, changes and deletions alike.

use super::informers::{Informers, MEDIUM_BUFFER, Shared};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

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

/// The Endpoints object a Service should have (upstream groups pods by identical port sets).
fn desired_endpoints(svc: &Service, pods: &[Arc<Pod>]) -> Value {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // port set -> (ready addresses, not-ready addresses, ports)
    type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let Some(ip) = pod_ip(p) else { continue };
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|sp| target_port(sp, p).map(|tp| json!({"name": sp.name, "port": tp, "protocol": sp.protocol.clone().unwrap_or_else(|| "TCP".into())})))
            .collect();
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let key = serde_json::to_string(&resolved).unwrap_or_default();
        let addr = json!({"ip": ip, "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()), "targetRef": target_ref(p)});
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (Vec::new(), Vec::new(), resolved));
        if is_ready(p) {
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

fn desired_slice(svc: &Service, pods: &[Arc<Pod>]) -> Value {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let first = pods.first();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
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
    let endpoints: Vec<Value> = pods
        .iter()
        .filter_map(|p| {
            let ip = pod_ip(p)?;
            let terminating = p.metadata.deletion_timestamp.is_some();
            let ready = is_ready(p) || publish_not_ready;
            let mut e = json!({
                "addresses": [ip],
                "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
                "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()),
                "targetRef": target_ref(p),
            });
            // A pod named by the service (StatefulSet pods: subdomain = service) gets a DNS name.
            if let Some(spec) = &p.spec
                && spec.subdomain.as_deref() == Some(svc.name_any().as_str())
                && let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty())
            {
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

async fn sync(client: &kube::Client, st: &Stores) {
    let services = st.services.state();
    // Indexes for this pass: one lookup per Service instead of a scan of every object.
    let mut pods_by_ns: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in st.pods.state() {
        pods_by_ns
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let endpoints: HashMap<(String, String), Arc<Endpoints>> = (st.endpoints.state().into_iter())
        .map(|e| ((e.namespace().unwrap_or_default(), e.name_any()), e))
        .collect();
    let mut slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for s in st.slices.state() {
        let managed = s.labels().get("endpointslice.kubernetes.io/managed-by");
        if let (Some(svc), Some(MANAGED_BY)) =
            (s.labels().get(SERVICE_NAME), managed.map(String::as_str))
        {
            let key = (s.namespace().unwrap_or_default(), svc.clone());
            slices.entry(key).or_default().push(s);
        }
    }
    let (no_pods, no_slices) = (Vec::new(), Vec::new());
    let mut wanted_eps: HashMap<(String, String), Value> = HashMap::new();
    let mut wanted_slices: HashMap<(String, String), (Arc<Service>, Value)> = HashMap::new();
    for svc in &services {
        if svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none_or(|s| s.is_empty())
            || svc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let ns = svc.namespace().unwrap_or_default();
        let members: Vec<Arc<Pod>> = (pods_by_ns.get(&ns).unwrap_or(&no_pods).iter())
            .filter(|p| !is_terminal(p) && selected(svc, p))
            .cloned()
            .collect();
        wanted_eps.insert(
            (ns.clone(), svc.name_any()),
            typed::<Endpoints>(desired_endpoints(svc, &members)),
        );
        wanted_slices.insert(
            (ns, svc.name_any()),
            (
                svc.clone(),
                typed::<EndpointSlice>(desired_slice(svc, &members)),
            ),
        );
    }
    // Endpoints: create or replace what differs; delete those of services that are gone.
    for ((ns, name), want) in &wanted_eps {
        let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
        let have = endpoints.get(&(ns.clone(), name.clone()));
        let have_v = have.and_then(|h| serde_json::to_value(h.as_ref()).ok());
        if have_v.as_ref().map(|h| content(h, &["subsets"])) == Some(content(want, &["subsets"])) {
            continue;
        }
        let mut obj: Endpoints = match serde_json::from_value(want.clone()) {
            Ok(o) => o,
            Err(_) => continue,
        };
        let r = match have {
            Some(h) => {
                obj.metadata.resource_version = h.resource_version();
                api.replace(name, &PostParams::default(), &obj)
                    .await
                    .map(|_| ())
            }
            None => api.create(&PostParams::default(), &obj).await.map(|_| ()),
        };
        if let Err(e) = r {
            tracing::debug!("endpoints {ns}/{name}: {e}");
        }
    }
    let existing: std::collections::HashSet<(String, String)> = (services.iter())
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    for ((ns, name), e) in &endpoints {
        // Endpoints of selector-less Services are the user's; only ours for deleted Services go.
        let ours = e
            .labels()
            .get("endpointslice.kubernetes.io/skip-mirror")
            .is_none()
            && name != "kubernetes";
        if ours && !existing.contains(&(ns.clone(), name.clone())) {
            let _ = Api::<Endpoints>::namespaced(client.clone(), ns)
                .delete(name, &DeleteParams::default())
                .await;
        }
    }
    // EndpointSlices: one managed slice per Service (the GC removes those of deleted Services).
    for ((ns, name), (_, want)) in &wanted_slices {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let mine = slices
            .get(&(ns.clone(), name.clone()))
            .unwrap_or(&no_slices);
        let fields = ["endpoints", "ports", "addressType"];
        match mine.first() {
            Some(have) => {
                let have_v = serde_json::to_value(have.as_ref()).unwrap_or_default();
                if content(&have_v, &fields) != content(want, &fields) {
                    let mut obj: EndpointSlice = match serde_json::from_value(want.clone()) {
                        Ok(o) => o,
                        Err(_) => continue,
                    };
                    obj.metadata.name = Some(have.name_any());
                    obj.metadata.generate_name = None;
                    obj.metadata.resource_version = have.resource_version();
                    if let Err(e) = api
                        .replace(&have.name_any(), &PostParams::default(), &obj)
                        .await
                    {
                        tracing::debug!("endpointslice {ns}/{}: {e}", have.name_any());
                    }
                }
                for extra in &mine[1..] {
                    let _ = api
                        .delete(&extra.name_any(), &DeleteParams::default())
                        .await;
                }
            }
            None => {
                if let Ok(obj) = serde_json::from_value::<EndpointSlice>(want.clone())
                    && let Err(e) = api.create(&PostParams::default(), &obj).await
                {
                    tracing::debug!("endpointslice {ns}/{name}: {e}");
                }
            }
        }
    }
}

pub async fn run(client: kube::Client, informers: Arc<Informers>) {
    let wake = Arc::new(Notify::new());
    // Endpoints and slices only this loop reads; Services and pods from the shared caches.
    let (endpoints, _) = Shared::<Endpoints>::start_with(&client, MEDIUM_BUFFER);
    let (slices, _) = Shared::<EndpointSlice>::start_with(&client, MEDIUM_BUFFER);
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
        sync(&client, &st).await;
    }
}
