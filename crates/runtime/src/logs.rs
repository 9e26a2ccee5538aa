//! Container logs in the CRI format the kubelet reads:
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <content>` per line, `P` for a partial line (split at
//! 16 KiB, or cut off at the stream's end), rotated by size as `<log>.<YYYYMMDD-HHMMSS>`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest line written as one entry.
pub const MAX_LINE: usize = 16 * 1024;

pub struct LogWriter {
    path: PathBuf,
    file: fs::File,
    size: u64,
    max_bytes: u64,
    max_files: usize,
}

impl LogWriter {
    pub fn open(path: &Path, max_bytes: u64, max_files: usize) -> std::io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1024),
            max_files: max_files.max(1),
        })
    }

    /// Writes one read chunk: a whole line (ending in `\n`) or a partial one.
    pub fn write_line(&mut self, stream: &str, chunk: &[u8]) -> std::io::Result<()> {
        let (content, tag) = match chunk.strip_suffix(b"\n") {
            Some(c) => (c, "F"),
            None => (chunk, "P"),
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut entry = Vec::with_capacity(content.len() + 48);
        write!(entry, "{now} {stream} {tag} ")?;
        entry.extend_from_slice(content);
        entry.push(b'\n');
        if self.size + entry.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&entry)?;
        self.size += entry.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S%.f");
        let rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        fs::rename(&self.path, rotated)?;
        let mut old = rotated_files(&self.path);
        // Keep `max_files` in all: the live file and the newest rotated ones.
        while old.len() > self.max_files - 1 {
            let _ = fs::remove_file(old.remove(0));
        }
        self.file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// One output stream of a container on its way into the log: bytes come in as they are read
/// and leave as entries, one per line, lines over `MAX_LINE` bytes in `MAX_LINE`-byte parts.
pub struct Lines {
    stream: &'static str,
    pending: Vec<u8>,
}

impl Lines {
    pub fn new(stream: &'static str) -> Lines {
        Lines {
            stream,
            pending: Vec::new(),
        }
    }

    /// Takes bytes read from the stream and writes out every entry they complete.
    pub fn push(&mut self, data: &[u8], log: &mut LogWriter) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            let len = match rest.iter().position(|&b| b == b'\n') {
                Some(end) if end < MAX_LINE => end + 1,
                _ if rest.len() >= MAX_LINE => MAX_LINE,
                _ => break,
            };
            let _ = log.write_line(self.stream, &rest[..len]);
            start += len;
        }
        self.pending.drain(..start);
    }

    /// The stream has ended: what is left is written as a partial line.
    pub fn finish(&mut self, log: &mut LogWriter) {
        if !self.pending.is_empty() {
            let _ = log.write_line(self.stream, &self.pending);
            self.pending.clear();
        }
    }
}

/// Rotated files of `log`, oldest first.
pub fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged_and_the_log_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&log, 1024, 2).unwrap();
        w.write_line("stdout", b"hello\n").unwrap();
        w.write_line("stderr", b"part").unwrap();
        let text = fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stderr P part"), "{}", lines[1]);
        assert!(chrono::DateTime::parse_from_rfc3339(lines[0].split(' ').next().unwrap()).is_ok());
        for i in 0..100 {
            w.write_line("stdout", format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(
            rotated_files(&log).len(),
            1,
            "max_files 2 = live + one rotated"
        );
        assert!(fs::metadata(&log).unwrap().len() <= 1024);
        assert!(fs::read_to_string(&log).unwrap().contains("line 99"));
    }

    #[test]
    fn reads_become_one_entry_per_line_and_long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut w = LogWriter::open(&log, 1 << 20, 1).unwrap();
        let mut out = Lines::new("stdout");
        // A line arriving in pieces, two lines in one read, a line of exactly MAX_LINE bytes
        // with its newline, one longer than MAX_LINE, and an unterminated end.
        out.push(b"hel", &mut w);
        out.push(b"lo\nsecond\nthi", &mut w);
        out.push(b"rd\n", &mut w);
        let mut exact = vec![b'a'; MAX_LINE - 1];
        exact.push(b'\n');
        out.push(&exact, &mut w);
        out.push(&vec![b'b'; MAX_LINE + 3], &mut w);
        out.push(b"\ntail", &mut w);
        out.finish(&mut w);
        let text = fs::read_to_string(&log).unwrap();
        let entries: Vec<(&str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ').skip(1);
                (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""))
            })
            .collect();
        let a = "a".repeat(MAX_LINE - 1);
        let (b_part, b_rest) = ("b".repeat(MAX_LINE), "bbb");
        let want = vec![
            ("stdout", "F", "hello"),
            ("stdout", "F", "second"),
            ("stdout", "F", "third"),
            ("stdout", "F", a.as_str()),
            ("stdout", "P", b_part.as_str()),
            ("stdout", "F", b_rest),
            ("stdout", "P", "tail"),
        ];
        assert_eq!(entries, want);
    }
}
