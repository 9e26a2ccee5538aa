//! kinglet: a whole Kubernetes distribution in one binary.
// API errors are large (they carry Status details) but only travel on the error path.
#![allow(clippy::result_large_err)]

mod apiserver;
mod cli;
mod controllers;
mod pki;
mod scheduler;
mod server;
mod store;

/// The Kubernetes API level kinglet serves.
pub const K8S_GIT_VERSION: &str = "v1.33.0+kinglet";
/// `kinglet --version`.
pub const VERSION_LINE: &str = concat!("v", env!("CARGO_PKG_VERSION"), " (Kubernetes API v1.33.0)");

fn main() {
    let cli = match cli::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kinglet: {e}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        cli::Command::Server(args) => server::run(args),
    };
    if let Err(e) = result {
        eprintln!("kinglet: {e:#}");
        std::process::exit(1);
    }
}
