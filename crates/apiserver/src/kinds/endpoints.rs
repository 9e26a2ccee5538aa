//! Endpoints and EndpointSlices: port protocols default to TCP; their `kubectl get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::{default, each, selector_protocols};
use crate::table::{AGE, Columns, N, age, arr, i, name, none_if_empty, s};

pub struct Endpoints;

impl KindBehaviour for Endpoints {
    fn defaults(&self, obj: &mut Value) {
        each(obj, "subsets", |s| selector_protocols(s, "ports"));
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (vec![N, ("Endpoints", "string", 0), AGE], |v| {
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
        });
        Some(columns)
    }
}

pub struct EndpointSlices;

impl KindBehaviour for EndpointSlices {
    fn defaults(&self, obj: &mut Value) {
        each(obj, "ports", |p| default(p, "protocol", json!("TCP")))
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
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
        );
        Some(columns)
    }
}
