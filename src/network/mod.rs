//! The pod network of a node (issue 5). Address management is here and tested; the bridge,
//! the veth pairs and the routes that use it are being built, so nothing calls it yet.
#![allow(dead_code)]

pub mod ipam;
