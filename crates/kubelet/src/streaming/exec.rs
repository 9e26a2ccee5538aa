//! The jobs of exec and attach sessions. A command runs through the `kinglet exec` helper, so
//! libcontainer never runs in this multi-threaded process; with a terminal, libcontainer hands
//! the terminal's controlling end to a socket we listen on, and we pump it here.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Io, Outcome, Output};
use kinglet_runtime::ContainerDir;

/// Copies `r` to `out` (or drains it when nobody wants it) until it ends.
async fn pump(mut r: impl AsyncRead + Unpin, out: Option<Output>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(o) = &out
                    && !o.write(buf[..n].to_vec()).await
                {
                    return;
                }
            }
        }
    }
}

/// Copies the client's input to `w`; closing `w` when the client closes its input.
async fn feed(mut w: impl tokio::io::AsyncWrite + Unpin, mut stdin: mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = stdin.recv().await {
        if w.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

fn helper(exe: &std::path::Path, dir: &ContainerDir) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(exe);
    c.arg("exec").arg(&dir.0).kill_on_drop(true);
    c
}

fn outcome_of(status: std::io::Result<std::process::ExitStatus>) -> Outcome {
    match status {
        Ok(s) => match s.code() {
            Some(code) => Outcome::Exited(code),
            None => Outcome::Failed("the command was killed".into()),
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Runs `command` in the container of `dir`.
pub async fn run(
    io: Io,
    exe: PathBuf,
    dir: ContainerDir,
    command: Vec<String>,
    tty: bool,
) -> Outcome {
    if tty {
        return run_on_terminal(io, exe, dir, command).await;
    }
    let child = helper(&exe, &dir)
        .arg("--")
        .args(&command)
        .stdin(if io.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("error executing command in container: {e}")),
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Outcome::Failed("no output pipes".into());
    };
    let input = match (child.stdin.take(), io.stdin) {
        (Some(w), Some(rx)) => Some(tokio::spawn(feed(w, rx))),
        _ => None,
    };
    tokio::join!(pump(stdout, io.stdout), pump(stderr, io.stderr));
    let outcome = outcome_of(child.wait().await);
    if let Some(i) = input {
        i.abort();
    }
    outcome
}

/// Where libcontainer will send the terminal: a short path, as Unix socket paths must be.
fn console_socket_path() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "kinglet-tty-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

async fn run_on_terminal(io: Io, exe: PathBuf, dir: ContainerDir, command: Vec<String>) -> Outcome {
    let path = console_socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(format!("console socket {}: {e}", path.display())),
    };
    let child = helper(&exe, &dir)
        .arg("--console-socket")
        .arg(&path)
        .arg("--")
        .args(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Outcome::Failed(format!("error executing command in container: {e}"));
        }
    };
    // Either libcontainer connects with the terminal, or the helper fails first.
    let accepted = tokio::select! {
        biased;
        a = listener.accept() => a.ok(),
        _ = child.wait() => None,
    };
    let _ = std::fs::remove_file(&path);
    let Some((stream, _)) = accepted else {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        return Outcome::Failed(format!(
            "error executing command in container: {}",
            err.trim()
        ));
    };
    let master = match stream
        .into_std()
        .map_err(anyhow::Error::from)
        .and_then(|s| kinglet_runtime::tty::receive_fd(&s))
    {
        Ok(fd) => fd,
        Err(e) => return Outcome::Failed(format!("terminal: {e:#}")),
    };
    let (reader, writer) = match (master.try_clone(), master.try_clone()) {
        (Ok(r), Ok(w)) => (
            tokio::fs::File::from_std(std::fs::File::from(r)),
            tokio::fs::File::from_std(std::fs::File::from(w)),
        ),
        _ => return Outcome::Failed("terminal: cannot duplicate".into()),
    };
    let mut input = io.stdin.map(|rx| tokio::spawn(feed(writer, rx)));
    let resize = io.resize.map(|mut rx| {
        tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                kinglet_runtime::tty::set_size(&master, size.width, size.height);
            }
        })
    });
    // The terminal reads end (EIO) once the command and everything it started have exited.
    // When the client's input ends first (it went away), the terminal is closed as upstream
    // does: the command gets SIGHUP.
    let input_closed = async {
        match input.as_mut() {
            Some(task) => {
                let _ = task.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = pump(reader, io.stdout) => {}
        _ = input_closed => {}
    }
    if let Some(task) = resize {
        task.abort();
    }
    let outcome = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => outcome_of(status),
        Err(_) => Outcome::Failed("the command did not end after its terminal closed".into()),
    };
    if let Some(task) = input {
        task.abort();
    }
    outcome
}

/// Attaches to a container's main process: its output from now on, until it exits, and the
/// client's input to its stdin when it keeps one open.
pub async fn attach(io: Io, log: PathBuf, dir: ContainerDir) -> Outcome {
    let input = match (
        io.stdin,
        tokio::net::UnixStream::connect(dir.attach_socket()).await,
    ) {
        (Some(rx), Ok(socket)) => Some(tokio::spawn(feed(socket, rx))),
        _ => None,
    };
    // A container on a terminal takes size changes as "<width> <height>" lines.
    let resize = match (
        io.resize,
        tokio::net::UnixStream::connect(dir.resize_socket()).await,
    ) {
        (Some(mut sizes), Ok(mut socket)) => Some(tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let line = format!("{} {}\n", size.width, size.height);
                if socket.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        })),
        _ => None,
    };
    // One follower per stream the client wants (a terminal has only stdout).
    let mut followers = Vec::new();
    for (out, stream) in [(io.stdout, "stdout"), (io.stderr, "stderr")] {
        let Some(out) = out else { continue };
        let (tx, mut rx) = mpsc::channel(16);
        let opts = crate::logs::Options {
            follow: true,
            since: Some(chrono::Utc::now()),
            stream: Some(stream),
            ..Default::default()
        };
        let dir = dir.clone();
        tokio::spawn(crate::logs::follow(log.clone(), opts, tx, move || {
            !crate::containers::is_running(&dir)
        }));
        followers.push(async move {
            while let Some(Ok(data)) = rx.recv().await {
                if !data.is_empty() && !out.write(data.to_vec()).await {
                    break;
                }
            }
        });
    }
    futures::future::join_all(followers).await;
    for task in [input, resize].into_iter().flatten() {
        task.abort();
    }
    Outcome::Exited(0)
}
