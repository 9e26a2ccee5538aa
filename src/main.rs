//! kinglet: a whole Kubernetes distribution in one binary.
// API errors are large (they carry Status details) but only travel on the error path.
#![allow(clippy::result_large_err)]

mod apiserver;
mod cli;
mod controllers;
mod image;
mod kubelet;
mod pki;
mod runtime;
mod scheduler;
mod server;
mod store;

// JSON-heavy request handling allocates a lot; mimalloc is faster than glibc malloc here and
// fragments less across threads (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Kubernetes API level kinglet serves.
pub const K8S_GIT_VERSION: &str = "v1.33.0+kinglet";
/// `kinglet --version`.
pub const VERSION_LINE: &str = concat!("v", env!("CARGO_PKG_VERSION"), " (Kubernetes API v1.33.0)");

/// mimalloc commits whole arenas eagerly and keeps freed memory for a while by default; on a
/// small device we would rather use memory as it is touched and give it back at once (idle
/// RSS of the server: 54 MB -> 30 MB). The options must be set before the first allocation
/// creates an arena, so this runs as an ELF constructor, before Rust's runtime starts.
extern "C" fn tune_allocator() {
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the C allocator, called once before any thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

fn main() {
    // One TLS provider for every client built without an explicit one (registry pulls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match cli::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kinglet: {e}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        cli::Command::Server(args) => server::run(*args),
        cli::Command::Images(args) => image::cli::run(args),
        cli::Command::Supervise { dir } => runtime::supervisor::main(&dir),
        cli::Command::Sandbox { dir, hostname } => runtime::sandbox::main(&dir, &hostname),
        cli::Command::Exec {
            dir,
            console_socket,
            args,
        } => runtime::exec::main(&dir, console_socket.as_deref(), args),
    };
    if let Err(e) = result {
        eprintln!("kinglet: {e:#}");
        std::process::exit(1);
    }
}
