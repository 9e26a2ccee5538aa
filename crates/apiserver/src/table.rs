//! `meta.k8s.io/v1` Table responses with upstream's columns, so `kubectl get` prints what
//! users know.

use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::registry::Resource;

/// Upstream's `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age_of(ts: Option<&str>) -> String {
    match ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value) -> Value {
    json!(age_of(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
    ))
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn i(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn none_if_empty(v: String) -> Value {
    json!(if v.is_empty() {
        "<none>".to_string()
    } else {
        v
    })
}

/// Column (name, type, priority) and a row function.
type Columns = (
    Vec<(&'static str, &'static str, u8)>,
    fn(&Value) -> Vec<Value>,
);

fn name(obj: &Value) -> Value {
    json!(s(obj, "/metadata/name"))
}

fn containers_images(obj: &Value, ptr: &str) -> (Value, Value) {
    let cs = arr(obj, ptr);
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (json!(names.join(",")), json!(images.join(",")))
}

/// A label selector object in `kubectl`'s string form.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vals: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        let key = s(e, "/key");
        parts.push(match s(e, "/operator") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

fn map_string(obj: &Value, ptr: &str) -> String {
    obj.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses = arr(p, "/status/containerStatuses");
    let total = arr(p, "/spec/containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let mut reason = s(p, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(p, "/status/phase").to_string();
    }
    let inits = arr(p, "/status/initContainerStatuses");
    let mut initializing = false;
    for (n, c) in inits.iter().enumerate() {
        if c.pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        initializing = true;
        let waiting = s(c, "/state/waiting/reason");
        reason = if !s(c, "/state/terminated/reason").is_empty() {
            format!("Init:{}", s(c, "/state/terminated/reason"))
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{n}/{}", arr(p, "/spec/initContainers").len())
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses.iter().rev() {
            let waiting = s(c, "/state/waiting/reason");
            let term = s(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if !term.is_empty() {
                reason = term.to_string();
            } else if c.pointer("/state/terminated").is_some() {
                let code = i(c, "/state/terminated/exitCode");
                reason = format!("ExitCode:{code}");
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(p, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let gates = arr(p, "/spec/readinessGates");
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(p, "/status/conditions");
        let ok = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        name(p),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        age(p),
        none_if_empty(s(p, "/status/podIP").into()),
        none_if_empty(s(p, "/spec/nodeName").into()),
        none_if_empty(s(p, "/status/nominatedNodeName").into()),
        json!(gates_text),
    ]
}

fn service_row(v: &Value) -> Vec<Value> {
    let typ = s(v, "/spec/type");
    let typ = if typ.is_empty() { "ClusterIP" } else { typ };
    let ports: Vec<String> = arr(v, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np > 0 => format!("{}:{np}/{proto}", i(p, "/port")),
                _ => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    let mut external: Vec<String> = arr(v, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    for ing in arr(v, "/status/loadBalancer/ingress") {
        let addr = if !s(ing, "/ip").is_empty() {
            s(ing, "/ip")
        } else {
            s(ing, "/hostname")
        };
        if !addr.is_empty() {
            external.push(addr.to_string());
        }
    }
    let external = match typ {
        "ExternalName" => s(v, "/spec/externalName").to_string(),
        "LoadBalancer" if external.is_empty() => "<pending>".into(),
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    };
    let cip = s(v, "/spec/clusterIP");
    let selector = map_string(v, "/spec/selector");
    vec![
        name(v),
        json!(typ),
        json!(if cip.is_empty() { "<none>" } else { cip }),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age(v),
        none_if_empty(selector),
    ]
}

fn node_row(n: &Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    let ready = arr(n, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    status.push(match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".into(),
        _ => "NotReady".into(),
    });
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        arr(n, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == t)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(n),
        json!(status.join(",")),
        none_if_empty(roles.join(",")),
        age(n),
        json!(s(n, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(n, "/status/nodeInfo/osImage")),
        json!(s(n, "/status/nodeInfo/kernelVersion")),
        json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn event_row(e: &Value) -> Vec<Value> {
    let last = [
        s(e, "/lastTimestamp"),
        s(e, "/eventTime"),
        s(e, "/metadata/creationTimestamp"),
    ]
    .into_iter()
    .find(|t| !t.is_empty());
    let obj = format!(
        "{}/{}",
        s(e, "/involvedObject/kind").to_lowercase(),
        s(e, "/involvedObject/name")
    );
    vec![
        json!(age_of(last)),
        json!(s(e, "/type")),
        json!(s(e, "/reason")),
        json!(obj),
        json!(s(e, "/message")),
    ]
}

fn columns(res: &Resource) -> Columns {
    const N: (&str, &str, u8) = ("Name", "string", 0);
    const AGE: (&str, &str, u8) = ("Age", "string", 0);
    match (res.storage.0.as_str(), res.storage.1.as_str()) {
        ("", "pods") => (
            vec![
                N,
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                AGE,
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ],
            pod_row,
        ),
        ("", "namespaces") => (vec![N, ("Status", "string", 0), AGE], |v| {
            vec![name(v), json!(s(v, "/status/phase")), age(v)]
        }),
        ("", "services") => (
            vec![
                N,
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0),
                ("Port(s)", "string", 0),
                AGE,
                ("Selector", "string", 1),
            ],
            service_row,
        ),
        ("", "nodes") => (
            vec![
                N,
                ("Status", "string", 0),
                ("Roles", "string", 0),
                AGE,
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ],
            node_row,
        ),
        ("", "configmaps") => (vec![N, ("Data", "integer", 0), AGE], |v| {
            let n = v
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + v.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name(v), json!(n), age(v)]
        }),
        ("", "secrets") => (
            vec![N, ("Type", "string", 0), ("Data", "integer", 0), AGE],
            |v| {
                let n = v
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![name(v), json!(s(v, "/type")), json!(n), age(v)]
            },
        ),
        ("", "serviceaccounts") => (vec![N, ("Secrets", "integer", 0), AGE], |v| {
            vec![name(v), json!(arr(v, "/secrets").len()), age(v)]
        }),
        ("", "events") => (
            vec![
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Message", "string", 0),
            ],
            event_row,
        ),
        ("", "endpoints") => (vec![N, ("Endpoints", "string", 0), AGE], |v| {
            let mut eps = Vec::new();
            for sub in arr(v, "/subsets") {
                for a in arr(sub, "/addresses") {
                    for p in arr(sub, "/ports") {
                        eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name(v), none_if_empty(shown), age(v)]
        }),
        ("", "persistentvolumeclaims") => (
            vec![
                N,
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("StorageClass", "string", 0),
                AGE,
            ],
            |v| {
                let modes: Vec<&str> = arr(v, "/status/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(access_mode)
                    .collect();
                vec![
                    name(v),
                    json!(s(v, "/status/phase")),
                    json!(s(v, "/spec/volumeName")),
                    json!(s(v, "/status/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(v, "/spec/storageClassName")),
                    age(v),
                ]
            },
        ),
        ("", "persistentvolumes") => (
            vec![
                N,
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("Reclaim Policy", "string", 0),
                ("Status", "string", 0),
                ("Claim", "string", 0),
                ("StorageClass", "string", 0),
                ("Reason", "string", 0),
                AGE,
            ],
            |v| {
                let modes: Vec<&str> = arr(v, "/spec/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(access_mode)
                    .collect();
                let claim = if s(v, "/spec/claimRef/name").is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}/{}",
                        s(v, "/spec/claimRef/namespace"),
                        s(v, "/spec/claimRef/name")
                    )
                };
                vec![
                    name(v),
                    json!(s(v, "/spec/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(v, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(v, "/status/phase")),
                    json!(claim),
                    json!(s(v, "/spec/storageClassName")),
                    json!(s(v, "/status/reason")),
                    age(v),
                ]
            },
        ),
        ("apps", "deployments") => (
            vec![
                N,
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                let desired = v
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                vec![
                    name(v),
                    json!(format!("{}/{desired}", i(v, "/status/readyReplicas"))),
                    json!(i(v, "/status/updatedReplicas")),
                    json!(i(v, "/status/availableReplicas")),
                    age(v),
                    c,
                    im,
                    json!(selector_string(
                        v.pointer("/spec/selector").unwrap_or(&Value::Null)
                    )),
                ]
            },
        ),
        ("apps", "replicasets") | ("", "replicationcontrollers") => (
            vec![
                N,
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                let sel = v.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
                let sel =
                    if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
                        selector_string(&sel)
                    } else {
                        map_string(v, "/spec/selector")
                    };
                vec![
                    name(v),
                    json!(
                        v.pointer("/spec/replicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    ),
                    json!(i(v, "/status/replicas")),
                    json!(i(v, "/status/readyReplicas")),
                    age(v),
                    c,
                    im,
                    json!(sel),
                ]
            },
        ),
        ("apps", "statefulsets") => (
            vec![
                N,
                ("Ready", "string", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                let desired = v
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                vec![
                    name(v),
                    json!(format!("{}/{desired}", i(v, "/status/readyReplicas"))),
                    age(v),
                    c,
                    im,
                ]
            },
        ),
        ("apps", "daemonsets") => (
            vec![
                N,
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Node Selector", "string", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                vec![
                    name(v),
                    json!(i(v, "/status/desiredNumberScheduled")),
                    json!(i(v, "/status/currentNumberScheduled")),
                    json!(i(v, "/status/numberReady")),
                    json!(i(v, "/status/updatedNumberScheduled")),
                    json!(i(v, "/status/numberAvailable")),
                    none_if_empty(map_string(v, "/spec/template/spec/nodeSelector")),
                    age(v),
                    c,
                    im,
                    json!(selector_string(
                        v.pointer("/spec/selector").unwrap_or(&Value::Null)
                    )),
                ]
            },
        ),
        ("batch", "jobs") => (
            vec![
                N,
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Duration", "string", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                let completions = v.pointer("/spec/completions").and_then(Value::as_i64);
                let done = i(v, "/status/succeeded");
                let comp = match completions {
                    Some(n) => format!("{done}/{n}"),
                    None => format!(
                        "{done}/1 of {}",
                        v.pointer("/spec/parallelism")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    ),
                };
                let conds = arr(v, "/status/conditions");
                let has = |t: &str| {
                    conds
                        .iter()
                        .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
                };
                let status = if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if v.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating"
                } else if has("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                };
                let start = chrono::DateTime::parse_from_rfc3339(s(v, "/status/startTime")).ok();
                let end = chrono::DateTime::parse_from_rfc3339(s(v, "/status/completionTime")).ok();
                let duration = match (start, end) {
                    (Some(a), Some(b)) => human_duration((b - a).num_seconds()),
                    (Some(a), None) => human_duration(
                        (chrono::Utc::now() - a.with_timezone(&chrono::Utc)).num_seconds(),
                    ),
                    _ => String::new(),
                };
                vec![
                    name(v),
                    json!(status),
                    json!(comp),
                    json!(duration),
                    age(v),
                    c,
                    im,
                ]
            },
        ),
        ("batch", "cronjobs") => (
            vec![
                N,
                ("Schedule", "string", 0),
                ("Timezone", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Last Schedule", "string", 0),
                AGE,
            ],
            |v| {
                let last = s(v, "/status/lastScheduleTime");
                vec![
                    name(v),
                    json!(s(v, "/spec/schedule")),
                    none_if_empty(s(v, "/spec/timeZone").into()),
                    json!(
                        v.pointer("/spec/suspend")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    ),
                    json!(arr(v, "/status/active").len()),
                    json!(if last.is_empty() {
                        "<none>".into()
                    } else {
                        age_of(Some(last))
                    }),
                    age(v),
                ]
            },
        ),
        ("coordination.k8s.io", "leases") => (vec![N, ("Holder", "string", 0), AGE], |v| {
            vec![name(v), json!(s(v, "/spec/holderIdentity")), age(v)]
        }),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                N,
                ("AddressType", "string", 0),
                ("Ports", "string", 0),
                ("Endpoints", "string", 0),
                AGE,
            ],
            |v| {
                let ports: Vec<String> = arr(v, "/ports")
                    .iter()
                    .map(|p| i(p, "/port").to_string())
                    .collect();
                let eps: Vec<&str> = arr(v, "/endpoints")
                    .iter()
                    .flat_map(|e| arr(e, "/addresses"))
                    .filter_map(Value::as_str)
                    .collect();
                let shown = if eps.len() > 3 {
                    format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
                } else {
                    eps.join(",")
                };
                vec![
                    name(v),
                    json!(s(v, "/addressType")),
                    none_if_empty(ports.join(",")),
                    none_if_empty(shown),
                    age(v),
                ]
            },
        ),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            (vec![N, ("Role", "string", 0), AGE], |v| {
                vec![
                    name(v),
                    json!(format!(
                        "{}/{}",
                        s(v, "/roleRef/kind"),
                        s(v, "/roleRef/name")
                    )),
                    age(v),
                ]
            })
        }
        ("rbac.authorization.k8s.io", _) | ("apiextensions.k8s.io", _) => {
            (vec![N, ("Created At", "date", 0)], |v| {
                vec![name(v), json!(s(v, "/metadata/creationTimestamp"))]
            })
        }
        ("scheduling.k8s.io", "priorityclasses") => (
            vec![
                N,
                ("Value", "integer", 0),
                ("Global-Default", "boolean", 0),
                AGE,
            ],
            |v| {
                vec![
                    name(v),
                    json!(i(v, "/value")),
                    json!(
                        v.get("globalDefault")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    ),
                    age(v),
                ]
            },
        ),
        ("storage.k8s.io", "storageclasses") => (
            vec![
                N,
                ("Provisioner", "string", 0),
                ("ReclaimPolicy", "string", 0),
                ("VolumeBindingMode", "string", 0),
                ("AllowVolumeExpansion", "string", 0),
                AGE,
            ],
            |v| {
                vec![
                    name(v),
                    json!(s(v, "/provisioner")),
                    json!(
                        v.get("reclaimPolicy")
                            .and_then(Value::as_str)
                            .unwrap_or("Delete")
                    ),
                    json!(
                        v.get("volumeBindingMode")
                            .and_then(Value::as_str)
                            .unwrap_or("Immediate")
                    ),
                    json!(
                        v.get("allowVolumeExpansion")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                            .to_string()
                    ),
                    age(v),
                ]
            },
        ),
        ("autoscaling", "horizontalpodautoscalers") => (
            vec![
                N,
                ("Reference", "string", 0),
                ("Targets", "string", 0),
                ("MinPods", "string", 0),
                ("MaxPods", "string", 0),
                ("Replicas", "string", 0),
                AGE,
            ],
            |v| {
                vec![
                    name(v),
                    json!(format!(
                        "{}/{}",
                        s(v, "/spec/scaleTargetRef/kind"),
                        s(v, "/spec/scaleTargetRef/name")
                    )),
                    json!("<unknown>"),
                    json!(
                        v.pointer("/spec/minReplicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    ),
                    json!(i(v, "/spec/maxReplicas")),
                    json!(i(v, "/status/currentReplicas")),
                    age(v),
                ]
            },
        ),
        ("networking.k8s.io", "networkpolicies") => {
            (vec![N, ("Pod-Selector", "string", 0), AGE], |v| {
                vec![
                    name(v),
                    none_if_empty(selector_string(
                        v.pointer("/spec/podSelector").unwrap_or(&Value::Null),
                    )),
                    age(v),
                ]
            })
        }
        ("policy", "poddisruptionbudgets") => (
            vec![
                N,
                ("Min Available", "string", 0),
                ("Max Unavailable", "string", 0),
                ("Allowed Disruptions", "integer", 0),
                AGE,
            ],
            |v| {
                let show = |p: &str| {
                    v.pointer(p)
                        .map(|x| {
                            x.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .unwrap_or_else(|| "N/A".into())
                };
                vec![
                    name(v),
                    json!(show("/spec/minAvailable")),
                    json!(show("/spec/maxUnavailable")),
                    json!(i(v, "/status/disruptionsAllowed")),
                    age(v),
                ]
            },
        ),
        _ => (vec![N, AGE], |v| vec![name(v), age(v)]),
    }
}

fn access_mode(m: &str) -> &str {
    match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        other => other,
    }
}

/// Evaluates a simple CRD printer-column JSONPath (`.spec.replicas`, `.status.conditions[0].type`).
fn eval_json_path(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = match cur.get(field) {
            Some(v) => v,
            None => return Value::Null,
        };
        if let Some(n) = index {
            cur = match cur.get(n) {
                Some(v) => v,
                None => return Value::Null,
            };
        }
    }
    cur.clone()
}

/// (name, type, priority, jsonPath, description)
type CustomColumn = (String, String, u8, String, String);

fn custom_columns(res: &Resource) -> Option<Vec<CustomColumn>> {
    let info = res.custom.as_ref()?;
    if info.printer_columns.is_empty() {
        return None;
    }
    Some(
        info.printer_columns
            .iter()
            .map(|c| {
                (
                    s(c, "/name").to_string(),
                    c.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("string")
                        .to_string(),
                    c.get("priority").and_then(Value::as_i64).unwrap_or(0) as u8,
                    s(c, "/jsonPath").to_string(),
                    s(c, "/description").to_string(),
                )
            })
            .collect(),
    )
}

/// Converts an object or a list into a Table.
pub fn to_table(_api: &Api, res: &Resource, ctx: &Ctx, value: &Value) -> Value {
    let is_list = value.get("items").is_some_and(Value::is_array)
        && value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"));
    let objects: Vec<&Value> = if is_list {
        value["items"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    } else {
        vec![value]
    };
    let include = ctx.query.get("includeObject").unwrap_or("Metadata");
    let row_object = |o: &Value| match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    };
    let (defs, rows): (Vec<Value>, Vec<Value>) = if let Some(cols) = custom_columns(res) {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
        ];
        defs.extend(cols.iter().map(|(n, t, p, _, d)| {
            let (typ, format) = if t == "date" {
                ("string", "date")
            } else {
                (t.as_str(), "")
            };
            json!({"name": n, "type": typ, "format": format, "description": d, "priority": p})
        }));
        let rows = objects
            .iter()
            .map(|o| {
                let mut cells = vec![name(o)];
                for (_, t, _, path, _) in &cols {
                    let v = eval_json_path(o, path);
                    cells.push(if t == "date" {
                        json!(age_of(v.as_str()))
                    } else {
                        v
                    });
                }
                json!({"cells": cells, "object": row_object(o)})
            })
            .collect();
        (defs, rows)
    } else {
        let (cols, row) = columns(res);
        let defs = cols
            .iter()
            .map(|(n, t, p)| {
                let format = if *n == "Name" { "name" } else { "" };
                json!({"name": n, "type": t, "format": format, "description": "", "priority": p})
            })
            .collect();
        let rows = objects
            .iter()
            .map(|o| json!({"cells": row(o), "object": row_object(o)}))
            .collect();
        (defs, rows)
    };
    let mut meta = json!({});
    if let Some(m) = value.get("metadata") {
        for k in ["resourceVersion", "continue", "remainingItemCount"] {
            if let Some(v) = m.get(k) {
                meta[k] = v.clone();
            }
        }
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_upstream() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn json_path() {
        let o = json!({"spec": {"replicas": 3, "list": [{"a": "x"}]}});
        assert_eq!(eval_json_path(&o, ".spec.replicas"), json!(3));
        assert_eq!(eval_json_path(&o, ".spec.list[0].a"), json!("x"));
        assert_eq!(eval_json_path(&o, ".spec.missing"), Value::Null);
    }
}
