//! kinglet: a whole Kubernetes distribution in one binary.

mod agent;
mod allocator;
mod backup;
mod certificate;
mod check_config;
mod cli;
mod images;
mod loadbalancer;
mod notify;
mod secrets_encrypt;
mod server;
mod token;
mod tunnel;

// JSON-heavy request handling allocates a lot; mimalloc is faster than glibc malloc here and
// fragments less across threads (docs/BENCHMARKS.md). Container supervisors, short-lived and
// forked twice by libcontainer, start faster on glibc's malloc (`allocator`).
#[global_allocator]
static ALLOCATOR: allocator::Switch = allocator::Switch;

/// `kinglet --version`.
pub const VERSION_LINE: &str = concat!("v", env!("CARGO_PKG_VERSION"), " (Kubernetes API v1.33.0)");

/// mimalloc commits whole arenas eagerly and keeps freed memory for a while by default; on a
/// small device we would rather use memory as it is touched and give it back at once (idle
/// RSS of the server: 54 MB -> 30 MB). The options must be set before the first allocation
/// creates an arena, so this runs as an ELF constructor, before Rust's runtime starts.
extern "C" fn tune_allocator(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
    _envp: *const *const std::ffi::c_char,
) {
    allocator::choose(argc, argv);
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
static TUNE_ALLOCATOR: extern "C" fn(
    std::ffi::c_int,
    *const *const std::ffi::c_char,
    *const *const std::ffi::c_char,
) = tune_allocator;

fn main() {
    // Every container start runs `kinglet supervise <dir>`: that hot path skips building the
    // whole command line interface (and the TLS set-up below).
    let mut args = std::env::args_os().skip(1);
    if let (Some(cmd), Some(dir), None) = (args.next(), args.next(), args.next())
        && cmd == "supervise"
    {
        kinglet_runtime::supervisor::main(std::path::Path::new(&dir));
    }
    // Before any thread: kept for readiness messages, hidden from children (containers).
    notify::take_socket();
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
        cli::Command::Agent(args) => agent::run(*args),
        cli::Command::Images(args) => images::run(args),
        cli::Command::Cleanup(args) => server::cleanup(&args),
        cli::Command::Token(args) => token::run(&args),
        cli::Command::Certificate(args) => certificate::run(&args),
        cli::Command::SecretsEncrypt(args) => secrets_encrypt::run(&args),
        cli::Command::CheckConfig => check_config::run(),
        cli::Command::Backup(args) => backup::run(&args),
        cli::Command::Dirs { args } => cli::print_dirs(&args),
        cli::Command::Supervise { dir } => kinglet_runtime::supervisor::main(&dir),
        cli::Command::Sandbox {
            dir,
            hostname,
            network,
        } => kinglet_runtime::sandbox::main(&dir, &hostname, network.as_deref()),
        cli::Command::Exec {
            dir,
            console_socket,
            args,
        } => kinglet_runtime::exec::main(&dir, console_socket.as_deref(), args),
    };
    if let Err(e) = result {
        eprintln!("kinglet: {e:#}");
        std::process::exit(1);
    }
}
