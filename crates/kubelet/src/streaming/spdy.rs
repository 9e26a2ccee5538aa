//! The server side of SPDY/3.1 as Kubernetes clients speak it (moby/spdystream): the peer opens
//! streams with SYN_STREAM, each gets a SYN_REPLY at once (the client waits for it, and drops
//! data that comes before it); data frames carry bytes, FIN half-closes. spdystream does no flow
//! control (it never sends WINDOW_UPDATE), so neither side enforces windows here. Header blocks
//! are zlib-compressed with SPDY/3's preset dictionary, one compression context per direction.

use std::collections::{HashMap, HashSet};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 1;
const RST_CANCEL: u32 = 5;
/// Largest header block we inflate (stream headers here are a few short pairs).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest frame we accept (clients write at most 32 KiB per frame).
const MAX_FRAME: usize = 1 << 20;

/// SPDY/3's zlib dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1).
#[rustfmt::skip]
const DICTIONARY: &[u8] = b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\
    \x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06\
    accept\x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\x00\
    \x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03\
    age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dc\
    ache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\
    \x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\
    \x0econtent-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcont\
    ent-md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\x00\x00\
    \x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07\
    expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-matc\
    h\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\
    \x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlas\
    t-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\
    \x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-\
    authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0b\
    retry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07tra\
    iler\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0a\
    user-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warni\
    ng\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03\
    get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\
    \x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin1001\
    0120120220520630030230330430530630740240540640740840941041141241341441\
    5416417502504505203 Non-Authoritative Information204 No Content301 Mov\
    ed Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Foun\
    d500 Internal Server Error501 Not Implemented503 Service UnavailableJa\
    n Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, \
    Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif\
    ,application/xml,application/xhtml+xml,text/plain,text/javascript,publ\
    icprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-\
    ,*,enq=0.";

/// A stream the peer opened: its headers (names lower-case) and the data it sends.
pub struct Stream {
    pub id: u32,
    pub headers: HashMap<String, String>,
    /// Data from the peer; ends when the peer half-closes or resets the stream.
    pub data: mpsc::Receiver<Vec<u8>>,
    pub out: Sender,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Writes to the peer; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    id: u32,
    tx: mpsc::Sender<Out>,
}

impl Sender {
    /// Sends `data` on the stream; false once the connection is gone.
    pub async fn write(&self, data: Vec<u8>) -> bool {
        self.tx.send(Out::Data(self.id, data, false)).await.is_ok()
    }
    /// Half-closes the stream from our side.
    pub async fn finish(&self) {
        let _ = self.tx.send(Out::Data(self.id, Vec::new(), true)).await;
    }
    /// Abandons the stream (RST_STREAM CANCEL).
    pub async fn reset(&self) {
        let _ = self.tx.send(Out::Reset(self.id)).await;
    }
}

enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Reset(u32),
    Ping(u32),
    /// Resets what is still open, says GOAWAY and closes our side.
    Close,
}

/// A SPDY connection: the streams the peer opens arrive on `streams`.
pub struct Session {
    pub streams: mpsc::Receiver<Stream>,
    tx: mpsc::Sender<Out>,
    writer: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts serving a connection whose HTTP upgrade has been answered.
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(64);
        let (streams_tx, streams) = mpsc::channel(16);
        let writer = tokio::spawn(write_loop(write, rx));
        let out = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = read_loop(read, out, streams_tx).await {
                tracing::debug!("spdy: {e}");
            }
        });
        Session {
            streams,
            tx,
            writer,
        }
    }

    /// Resets every stream the peer opens from now on (the session has all it needs).
    pub fn refuse_more_streams(&mut self) {
        let (_, closed) = mpsc::channel(1);
        let mut rest = std::mem::replace(&mut self.streams, closed);
        tokio::spawn(async move {
            while let Some(s) = rest.recv().await {
                s.out.reset().await;
            }
        });
    }

    /// Ends the connection after everything queued so far has been written.
    pub async fn close(self) {
        let _ = self.tx.send(Out::Close).await;
        drop(self.tx);
        let _ = self.writer.await;
    }
}

/// Bytes of a frame after the 8-byte header.
fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data_frame(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// Our header blocks: always empty (what Kubernetes servers reply with), but compressed in the
/// connection's one zlib context as the peer's reader expects.
struct HeaderWriter(Compress);

impl HeaderWriter {
    fn new() -> HeaderWriter {
        let mut c = Compress::new(Compression::best(), true);
        // Cannot fail for a fresh stream with a zlib backend.
        let _ = c.set_dictionary(DICTIONARY);
        HeaderWriter(c)
    }
    fn empty_block(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        self.0
            .compress_vec(&0u32.to_be_bytes(), &mut out, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        Ok(out)
    }
}

async fn write_loop<W: AsyncWrite>(write: W, mut rx: mpsc::Receiver<Out>) {
    let mut w = std::pin::pin!(tokio::io::BufWriter::new(write));
    let mut headers = HeaderWriter::new();
    let mut open: HashSet<u32> = HashSet::new();
    let mut last_peer_stream = 0u32;
    while let Some(first) = rx.recv().await {
        // Write everything queued, then flush once.
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let frame = match out {
                Out::Reply(id) => {
                    open.insert(id);
                    last_peer_stream = last_peer_stream.max(id);
                    let Ok(block) = headers.empty_block() else {
                        return;
                    };
                    let mut payload = id.to_be_bytes().to_vec();
                    payload.extend_from_slice(&block);
                    control_frame(SYN_REPLY, 0, &payload)
                }
                Out::Data(id, data, fin) => {
                    if !open.contains(&id) {
                        Vec::new()
                    } else {
                        if fin {
                            open.remove(&id);
                        }
                        // A frame holds at most 2^24 - 1 bytes.
                        let mut frames = Vec::new();
                        let mut chunks = data.chunks(0xff_ffff).peekable();
                        if chunks.peek().is_none() {
                            frames.extend(data_frame(id, fin, &[]));
                        }
                        while let Some(c) = chunks.next() {
                            frames.extend(data_frame(id, fin && chunks.peek().is_none(), c));
                        }
                        frames
                    }
                }
                Out::Reset(id) => {
                    if open.remove(&id) {
                        let mut p = id.to_be_bytes().to_vec();
                        p.extend_from_slice(&RST_CANCEL.to_be_bytes());
                        control_frame(RST_STREAM, 0, &p)
                    } else {
                        Vec::new()
                    }
                }
                Out::Ping(id) => control_frame(PING, 0, &id.to_be_bytes()),
                Out::Close => {
                    let mut frames = Vec::new();
                    for id in open.drain() {
                        let mut p = id.to_be_bytes().to_vec();
                        p.extend_from_slice(&RST_CANCEL.to_be_bytes());
                        frames.extend(control_frame(RST_STREAM, 0, &p));
                    }
                    let mut p = last_peer_stream.to_be_bytes().to_vec();
                    p.extend_from_slice(&0u32.to_be_bytes());
                    frames.extend(control_frame(GOAWAY, 0, &p));
                    let _ = w.write_all(&frames).await;
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                    return;
                }
            };
            if !frame.is_empty() && w.write_all(&frame).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// Inflates the peer's header blocks, all parts of one zlib stream.
struct HeaderReader(Decompress);

impl HeaderReader {
    fn read_block(&mut self, input: &[u8]) -> std::io::Result<HashMap<String, String>> {
        let mut out = Vec::with_capacity(256);
        let mut consumed = 0usize;
        while consumed < input.len() {
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(std::io::Error::other("header block too large"));
            }
            out.reserve(1024);
            let before_in = self.0.total_in();
            let res = self
                .0
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.0.total_in() - before_in) as usize;
            match res {
                Ok(Status::Ok) | Ok(Status::BufError) => {}
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(DICTIONARY)
                        .map_err(std::io::Error::other)?;
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(b: &[u8]) -> std::io::Result<HashMap<String, String>> {
    let bad = || std::io::Error::other("malformed header block");
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> std::io::Result<usize> {
        let v = b.get(*pos..*pos + 4).ok_or_else(bad)?;
        *pos += 4;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    };
    let count = u32_at(&mut pos)?;
    let mut headers = HashMap::new();
    for _ in 0..count {
        let n = u32_at(&mut pos)?;
        let name = b.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        let n = u32_at(&mut pos)?;
        let value = b.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        headers.insert(
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            // Several values are joined by NUL; the first is the one that matters here.
            String::from_utf8_lossy(value.split(|c| *c == 0).next().unwrap_or_default())
                .into_owned(),
        );
    }
    Ok(headers)
}

async fn read_loop<R: AsyncRead>(
    read: R,
    out: mpsc::Sender<Out>,
    streams: mpsc::Sender<Stream>,
) -> std::io::Result<()> {
    let mut r = std::pin::pin!(tokio::io::BufReader::new(read));
    let mut headers = HeaderReader(Decompress::new(true));
    let mut inbound: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        let word = |i: usize| -> std::io::Result<u32> {
            payload
                .get(i..i + 4)
                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]) & 0x7fff_ffff)
                .ok_or_else(|| std::io::Error::other("short control frame"))
        };
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let fin = flags & FLAG_FIN != 0;
            if let Some(tx) = inbound.get(&id) {
                if !payload.is_empty() && tx.send(payload).await.is_err() {
                    // Nobody reads this stream any more; keep serving the others.
                }
                if fin {
                    inbound.remove(&id);
                }
            }
            continue;
        }
        match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                let id = word(0)?;
                let block = payload.get(10..).unwrap_or_default();
                let h = headers.read_block(block)?;
                let (tx, data) = mpsc::channel(64);
                if flags & FLAG_FIN == 0 {
                    inbound.insert(id, tx);
                }
                out.send(Out::Reply(id))
                    .await
                    .map_err(|_| std::io::Error::other("connection closed"))?;
                let stream = Stream {
                    id,
                    headers: h,
                    data,
                    out: Sender {
                        id,
                        tx: out.clone(),
                    },
                };
                if streams.send(stream).await.is_err() {
                    return Ok(());
                }
            }
            RST_STREAM => {
                inbound.remove(&word(0)?);
            }
            PING => {
                let _ = out.send(Out::Ping(word(0)?)).await;
            }
            GOAWAY => return Ok(()),
            HEADERS => {
                // Kept only so the shared zlib context stays in step.
                headers.read_block(payload.get(4..).unwrap_or_default())?;
            }
            SYN_REPLY | SETTINGS | WINDOW_UPDATE => {}
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown control frame type {other}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client side written against the spec: SYN_STREAM with compressed headers, data, FIN.
    fn client_headers(c: &mut Compress, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        c.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    fn syn_stream(c: &mut Compress, id: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&client_headers(c, pairs));
        control_frame(SYN_STREAM, 0, &p)
    }

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        let mut c = Compress::new(Compression::best(), true);
        assert_eq!(c.set_dictionary(DICTIONARY).unwrap(), 0xE3C6_A7C2);
    }

    #[tokio::test]
    async fn streams_get_replies_data_and_fin() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut comp = Compress::new(Compression::best(), true);
        comp.set_dictionary(DICTIONARY).unwrap();
        cw.write_all(&syn_stream(&mut comp, 1, &[("streamtype", "error")]))
            .await
            .unwrap();
        cw.write_all(&syn_stream(&mut comp, 3, &[("streamtype", "stdin")]))
            .await
            .unwrap();
        cw.write_all(&data_frame(3, false, b"hello")).await.unwrap();
        cw.write_all(&data_frame(3, true, b"")).await.unwrap();
        // A ping is echoed.
        cw.write_all(&control_frame(PING, 0, &7u32.to_be_bytes()))
            .await
            .unwrap();
        let s1 = session.streams.recv().await.unwrap();
        assert_eq!(s1.header("streamtype"), Some("error"));
        let mut s3 = session.streams.recv().await.unwrap();
        assert_eq!(s3.header("streamtype"), Some("stdin"));
        assert_eq!(s3.data.recv().await.unwrap(), b"hello");
        assert!(s3.data.recv().await.is_none(), "FIN ends the stream");
        s1.out.write(b"status".to_vec()).await;
        s1.out.finish().await;
        session.close().await;

        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.unwrap();
        // Walk the frames: two replies, a ping echo, data + FIN on 1, RST for 3, GOAWAY.
        let mut kinds = Vec::new();
        let mut inflate = HeaderReader(Decompress::new(true));
        let mut pos = 0;
        while pos < got.len() {
            let h = &got[pos..pos + 8];
            let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
            let body = &got[pos + 8..pos + 8 + len];
            if h[0] & 0x80 != 0 {
                let kind = u16::from_be_bytes([h[2], h[3]]);
                if kind == SYN_REPLY {
                    assert!(inflate.read_block(&body[4..]).unwrap().is_empty());
                }
                kinds.push(format!("c{kind}"));
            } else {
                kinds.push(format!("d{}:{}:{}", h[3], len, h[4]));
            }
            pos += 8 + len;
        }
        assert_eq!(
            kinds,
            ["c2", "c2", "c6", "d1:6:0", "d1:0:1", "c3", "c7"],
            "{kinds:?}"
        );
    }

    #[tokio::test]
    async fn garbage_ends_the_session_without_panicking() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(server);
        let (_cr, mut cw) = tokio::io::split(client);
        // A SYN_STREAM whose header block is not zlib.
        let frame = control_frame(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        cw.write_all(&frame).await.unwrap();
        assert!(session.streams.recv().await.is_none());
    }
}
