//! Reading container logs back for `kubectl logs`: the CRI files (rotated ones first), partial
//! lines joined, `sinceTime`/`sinceSeconds`, `tailLines`, `timestamps`, `limitBytes`, and
//! `follow` (new lines as they come, across rotation, until the container ends).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

#[derive(Debug, Default, Clone)]
pub struct Options {
    pub follow: bool,
    pub since: Option<DateTime<Utc>>,
    pub tail: Option<usize>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
    /// Only this stream ("stdout" or "stderr"), as CRI's log options allow.
    pub stream: Option<&'static str>,
}

struct Entry {
    time: DateTime<Utc>,
    stream: Vec<u8>,
    content: Vec<u8>,
    partial: bool,
}

/// Parses one CRI log line (without its newline); `None` if malformed.
fn parse(line: &[u8]) -> Option<Entry> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Entry {
        time: DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc),
        stream: stream.to_vec(),
        content: content.to_vec(),
        partial: tag == b"P",
    })
}

/// Whole lines (partials joined) from `data`, plus the unfinished tail of the input.
fn lines(data: &[u8], pending: &mut Option<Entry>) -> Vec<Entry> {
    let mut out = Vec::new();
    for raw in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(e) = parse(raw) else { continue };
        match pending.take() {
            Some(mut p) => {
                p.content.extend_from_slice(&e.content);
                p.partial = e.partial;
                if p.partial {
                    *pending = Some(p);
                } else {
                    out.push(p);
                }
            }
            None if e.partial => *pending = Some(e),
            None => out.push(e),
        }
    }
    out
}

fn render(e: &Entry, opts: &Options) -> Vec<u8> {
    if opts
        .stream
        .is_some_and(|s| s.as_bytes() != e.stream.as_slice())
    {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(e.content.len() + 40);
    if opts.timestamps {
        out.extend_from_slice(
            e.time
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                .as_bytes(),
        );
        out.push(b' ');
    }
    out.extend_from_slice(&e.content);
    out.push(b'\n');
    out
}

/// The log as it is now: every file of the container in order, filtered and rendered.
pub fn read_all(log: &Path, opts: &Options) -> Vec<u8> {
    let mut files = kinglet_runtime::logs::rotated_files(log);
    files.push(log.to_path_buf());
    let mut pending = None;
    let mut entries = Vec::new();
    for f in files {
        if let Ok(data) = fs::read(&f) {
            entries.extend(lines(&data, &mut pending));
        }
    }
    entries.extend(pending.take());
    if let Some(since) = opts.since {
        entries.retain(|e| e.time >= since);
    }
    if let Some(n) = opts.tail {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    if let Some(stream) = opts.stream {
        entries.retain(|e| e.stream == stream.as_bytes());
    }
    let mut out: Vec<u8> = entries.iter().flat_map(|e| render(e, opts)).collect();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// Streams the log: what is there, then new lines until `done()` says the container ended
/// and nothing more arrived. Ends early when the receiver goes away.
pub async fn follow(
    log: PathBuf,
    opts: Options,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    done: impl Fn() -> bool + Send + 'static,
) {
    let first = read_all(&log, &opts);
    let mut sent = first.len();
    if tx.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    let (mut offset, mut inode) = match fs::metadata(&log) {
        Ok(m) => (m.len(), std::os::unix::fs::MetadataExt::ino(&m)),
        Err(_) => (0, 0),
    };
    let mut pending = None;
    loop {
        let finished = done();
        let mut chunk = Vec::new();
        if let Ok(m) = fs::metadata(&log) {
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            if ino != inode || m.len() < offset {
                // Rotated: the new file starts from the beginning.
                inode = ino;
                offset = 0;
            }
            if m.len() > offset
                && let Ok(mut f) = fs::File::open(&log)
                && f.seek(SeekFrom::Start(offset)).is_ok()
            {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() {
                    // Only whole lines; the rest is read again next time.
                    let end = buf
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map(|i| i + 1)
                        .unwrap_or(0);
                    offset += end as u64;
                    for e in lines(&buf[..end], &mut pending) {
                        chunk.extend(render(&e, &opts));
                    }
                }
            }
        }
        if let Some(limit) = opts.limit_bytes {
            chunk.truncate(limit.saturating_sub(sent));
        }
        if !chunk.is_empty() {
            sent += chunk.len();
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
        }
        if finished || opts.limit_bytes.is_some_and(|l| sent >= l) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinglet_runtime::logs::LogWriter;

    #[test]
    fn partials_join_and_options_filter() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut w = LogWriter::open(&log, 1 << 20, 2).unwrap();
        w.write_line("stdout", b"one\n").unwrap();
        w.write_line("stdout", b"tw").unwrap();
        w.write_line("stdout", b"o\n").unwrap();
        w.write_line("stderr", b"three\n").unwrap();
        let all = read_all(&log, &Options::default());
        assert_eq!(String::from_utf8(all).unwrap(), "one\ntwo\nthree\n");
        let tail = read_all(
            &log,
            &Options {
                tail: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(tail, b"three\n");
        let stamped = read_all(
            &log,
            &Options {
                timestamps: true,
                tail: Some(1),
                ..Default::default()
            },
        );
        let text = String::from_utf8(stamped).unwrap();
        let (ts, rest) = text.split_once(' ').unwrap();
        assert!(DateTime::parse_from_rfc3339(ts).is_ok());
        assert_eq!(rest, "three\n");
        let future = Options {
            since: Some(Utc::now() + chrono::Duration::seconds(5)),
            ..Default::default()
        };
        assert!(read_all(&log, &future).is_empty());
        let limited = read_all(
            &log,
            &Options {
                limit_bytes: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(limited, b"one\nt");
        let errors = Options {
            stream: Some("stderr"),
            ..Default::default()
        };
        assert_eq!(read_all(&log, &errors), b"three\n");
        // Malformed lines are skipped rather than failing the read.
        std::fs::write(&log, b"garbage\n").unwrap();
        assert!(read_all(&log, &Options::default()).is_empty());
    }
}
