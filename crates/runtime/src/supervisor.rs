//! `kinglet supervise <dir>`: the per-container supervisor. It runs as its own session, so it
//! outlives kinglet; until the container has started it runs no thread but the grace-period
//! one, which holds no lock (libcontainer clones and changes process-wide state, which is only
//! safe here; `cgroups::start_attach_grace_period`); it owns the container's
//! stdout/stderr and writes them to the CRI log file; it reaps the container and records how it
//! ended in `exit.json`, which the kubelet reads.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Mutex;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};

use super::cgroups::GracePeriod;
use super::logs::{Lines, LogWriter};
use super::{ContainerDir, ExitState, Meta};

/// Entry point of the hidden subcommand; never returns.
pub fn main(dir: &Path) -> ! {
    // First, so that it overlaps as much of the preparation as it can.
    let grace_period = super::cgroups::start_attach_grace_period();
    let cdir = ContainerDir(dir.to_path_buf());
    // libcontainer's own diagnostics go to `<dir>/supervisor.log`.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("supervisor.log"));
    if let Ok(file) = log {
        // A fixed level rather than an env filter: no directive parsing on every start.
        // Errors only by default: libcontainer warns on every start of a cgroup v1 host about
        // controllers the kernel lacks, which costs time and says nothing.
        let level = if std::env::var_os("KINGLET_SUPERVISOR_DEBUG").is_some() {
            tracing::Level::DEBUG
        } else {
            tracing::Level::ERROR
        };
        let _ = tracing_subscriber::fmt()
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .with_max_level(level)
            .try_init();
    }
    let code = match run(&cdir, grace_period) {
        Ok(()) => 0,
        Err(e) => {
            // Tell the kubelet why the container could not start.
            let _ = cdir.write_exit(&ExitState {
                code: 128,
                reason: "StartError".into(),
                message: format!("{e:#}"),
                finished_at: super::now_rfc3339(),
            });
            1
        }
    };
    // Everything is written and closed by now: skip the exit handlers (the allocator's
    // teardown), as a short-lived helper process may.
    // SAFETY: _exit ends the process at once; no destructor is needed past this point.
    unsafe { libc::_exit(code) }
}

fn run(cdir: &ContainerDir, grace_period: Option<GracePeriod>) -> anyhow::Result<()> {
    // Hold the lock for life: the kubelet knows a supervisor is alive while it cannot take it.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cdir.lock_path())?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| anyhow::anyhow!("another supervisor holds {}: {e}", cdir.0.display()))?;
    // Orphaned grandchildren (the container's init is our child) are reaped here.
    nix::sys::prctl::set_child_subreaper(true)?;
    let meta: Meta = serde_json::from_slice(&fs::read(cdir.meta_path())?)?;
    super::rootfs::mount(cdir, &meta)?;

    let (out_r, out_w) = nix::unistd::pipe()?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    // With `stdin: true` the container reads a pipe that attach sessions write to.
    let (stdin, attach): (OwnedFd, Option<(OwnedFd, UnixListener)>) = if meta.stdin {
        let (in_r, in_w) = nix::unistd::pipe()?;
        let _ = fs::remove_file(cdir.attach_socket());
        (
            in_r,
            Some((in_w, UnixListener::bind(cdir.attach_socket())?)),
        )
    } else {
        (fs::File::open("/dev/null")?.into(), None)
    };
    // With `tty: true`, libcontainer sends the terminal's controlling end here.
    let console = if meta.tty {
        let _ = fs::remove_file(cdir.console_socket());
        Some(UnixListener::bind(cdir.console_socket())?)
    } else {
        None
    };
    let built = ContainerBuilder::new(meta.id.clone(), SyscallType::default())
        .with_root_path(cdir.state_root(&meta))
        .and_then(|b| {
            let b = if console.is_some() {
                b.with_console_socket(Some(cdir.console_socket()))
            } else {
                b
            };
            b.with_stdin(stdin)
                .with_stdout(out_w)
                .with_stderr(err_w)
                .as_init(cdir.bundle())
                .with_systemd(false)
                .with_detach(true)
                .build()
        });
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            super::rootfs::unmount(cdir);
            anyhow::bail!("creating the container: {e}");
        }
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        super::rootfs::unmount(cdir);
        anyhow::bail!("starting the container: {e}");
    }
    // The grace period is over by now (the container has joined its cgroups).
    if grace_period.is_some_and(|g| !g.finish()) {
        tracing::debug!("the grace-period thread could not move this process in place");
    }
    let pid = container
        .pid()
        .ok_or_else(|| anyhow::anyhow!("container has no pid"))?;
    cdir.write_started(pid.as_raw(), &super::now_rfc3339())?;

    // The container has started: from here on threads are fine.
    let mut log = LogWriter::open(&meta.log_path, meta.log_max_bytes, meta.log_max_files)?;
    let mut outputs = vec![
        (fs::File::from(out_r), "stdout"),
        (fs::File::from(err_r), "stderr"),
    ];
    // The container runs from here on: a failure to serve its terminal stops it rather than
    // leaving it unsupervised.
    let terminal = match console.as_ref().map(|l| terminal(cdir, l)) {
        Some(Ok(master)) => Some(master),
        Some(Err(e)) => {
            tracing::error!("container terminal: {e:#}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.as_raw()),
                nix::sys::signal::Signal::SIGKILL,
            );
            None
        }
        None => None,
    };
    if let Some(out) = terminal.as_ref().and_then(|m| m.try_clone().ok()) {
        outputs.push((fs::File::from(out), "stdout"));
    }
    if let Some((pipe, listener)) = attach {
        let once = meta.stdin_once;
        // On a terminal, input goes to its controlling end and "closing" it is an EOF (^D).
        let input = match &terminal {
            Some(master) => master.try_clone().ok().map(fs::File::from),
            None => Some(fs::File::from(pipe)),
        };
        let tty = terminal.is_some();
        if let Some(input) = input {
            std::thread::spawn(move || serve_stdin(input, listener, once, tty));
        }
    }
    // The output ends when the container and all it left behind have exited.
    copy_output(outputs, &mut log);
    let exit = loop {
        match waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => anyhow::bail!("waiting for the container: {e}"),
        }
    };
    let oom = super::cgroups::oom_killed(&meta.cgroup_path);
    let (code, signal) = exit;
    let reason = if oom && signal == Some(nix::sys::signal::Signal::SIGKILL) {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    // What libcontainer's delete does for a stopped container (our specs have no hooks), without
    // its cgroup manager start-up (a dozen mountinfo parses; ~6% of a container's start on the
    // profile in docs/BENCHMARKS.md).
    super::cgroups::remove(&meta.cgroup_path);
    let _ = fs::remove_dir_all(cdir.state_root(&meta).join(&meta.id));
    super::rootfs::unmount(cdir);
    cdir.write_exit(&ExitState {
        code,
        reason: reason.into(),
        message: String::new(),
        finished_at: super::now_rfc3339(),
    })?;
    Ok(())
}

/// Feeds attach sessions into the container's stdin, one at a time; with `once`, stdin is
/// closed when the first session ends.
fn serve_stdin(mut input: fs::File, listener: UnixListener, once: bool, tty: bool) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = std::io::copy(&mut conn, &mut input);
        if once {
            if tty {
                let _ = std::io::Write::write_all(&mut input, &[4]);
            }
            return;
        }
    }
}

/// Takes the container's terminal from libcontainer and serves size changes for it.
fn terminal(cdir: &ContainerDir, console: &UnixListener) -> anyhow::Result<OwnedFd> {
    // libcontainer has connected by now; never wait long for it.
    console.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let conn = loop {
        match console.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "libcontainer sent no terminal"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let master = super::tty::receive_fd(&conn)?;
    let _ = fs::remove_file(cdir.console_socket());
    let _ = fs::remove_file(cdir.resize_socket());
    let sizes = UnixListener::bind(cdir.resize_socket())?;
    let target = master.try_clone()?;
    std::thread::spawn(move || {
        for conn in sizes.incoming().flatten() {
            for line in BufReader::new(conn).lines().map_while(Result::ok) {
                let mut wh = line.split_whitespace().map(|n| n.parse::<u16>());
                if let (Some(Ok(w)), Some(Ok(h))) = (wh.next(), wh.next()) {
                    super::tty::set_size(&target, w, h);
                }
            }
        }
    });
    Ok(master)
}

/// Copies the container's output streams into the log until every one of them has ended.
/// One loop in this thread serves them all: a thread per stream costs more to start than the
/// whole copy of a short-lived container's output.
fn copy_output(outputs: Vec<(fs::File, &'static str)>, log: &mut LogWriter) {
    let mut open: Vec<(fs::File, Lines)> = outputs
        .into_iter()
        .map(|(file, stream)| (file, Lines::new(stream)))
        .collect();
    // One log entry's worth: a larger buffer costs a short-lived container more to clear (a
    // page fault per 4 KiB) than the extra reads cost a chatty one.
    let mut buf = vec![0u8; super::logs::MAX_LINE];
    while !open.is_empty() {
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|(file, _)| PollFd::new(file.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("waiting for the container's output: {e}");
                return;
            }
        }
        // Collected first: `fds` borrows the files that the reads below need mutably.
        let mut ready = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect::<Vec<_>>()
            .into_iter();
        open.retain_mut(|(file, lines)| {
            if !ready.next().unwrap_or(false) {
                return true;
            }
            match file.read(&mut buf) {
                Ok(n) if n > 0 => {
                    lines.push(&buf[..n], log);
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
                // The end of a pipe, or a terminal hung up (EIO).
                _ => {
                    lines.finish(log);
                    false
                }
            }
        });
    }
}
