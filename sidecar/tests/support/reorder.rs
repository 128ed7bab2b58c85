//! A test proxy that delivers responses out of order, as proxies and browsers do across
//! connections: raw HTTP/1.1 over TCP, one upstream connection per client connection (picked
//! round-robin over a list of live pods, like a Service), and a request carrying `X-Hold: <key>`
//! gets its response read from upstream in full and then held until the test calls
//! [`ReorderProxy::release`] — so a test can deliver a newer response first, kill the owner at
//! that moment, and only then deliver the older one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover_lab::localpool::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The request header that asks the proxy to hold the response.
pub const HOLD: &str = "x-hold";
/// How long a held response waits for its release before it is delivered anyway.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);
/// Largest request or response head read.
const MAX_HEAD: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// The response is read and waits.
    Waiting,
    Released,
}

#[derive(Default)]
struct Shared {
    held: Mutex<HashMap<String, Held>>,
    changed: tokio::sync::Notify,
}

/// The proxy; stops accepting when dropped.
pub struct ReorderProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ReorderProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ReorderProxy {
    /// Starts the proxy on a free port, in front of the addresses `upstreams` holds at each new
    /// connection.
    pub async fn start(upstreams: Arc<Mutex<Vec<SocketAddr>>>) -> ReorderProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the reorder proxy");
        let addr = listener.local_addr().expect("reorder proxy address");
        let shared = Arc::new(Shared::default());
        let next = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (s, upstreams, next) = (Arc::clone(&s), Arc::clone(&upstreams), Arc::clone(&next));
                tokio::spawn(async move {
                    if let Some(upstream) = connect(&upstreams, &next).await {
                        let _ = relay(client, upstream, &s).await;
                    }
                });
            }
        });
        ReorderProxy { addr, shared, accept }
    }

    /// Waits until the response of the request held under `key` has been read from upstream
    /// (so the pod has processed that request) and is waiting for its release.
    pub async fn wait_held(&self, key: &str, timeout: Duration) -> Result<(), String> {
        let shared = Arc::clone(&self.shared);
        wait_for(&format!("the response held as {key:?} to arrive at the reorder proxy"), timeout, || {
            let waiting = shared.held.lock().unwrap_or_else(|p| p.into_inner()).get(key) == Some(&Held::Waiting);
            async move { waiting }
        })
        .await
    }

    /// Lets the response held under `key` go to its client.
    pub fn release(&self, key: &str) {
        self.shared.held.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), Held::Released);
        self.shared.changed.notify_waiters();
    }
}

/// Connects to the next upstream, round-robin, skipping those that refuse.
async fn connect(upstreams: &Mutex<Vec<SocketAddr>>, next: &AtomicUsize) -> Option<TcpStream> {
    let list = upstreams.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for _ in 0..list.len() {
        let addr = list[next.fetch_add(1, Ordering::Relaxed) % list.len()];
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            return Some(s);
        }
    }
    None
}

/// Relays requests and responses, one at a time, holding the responses asked for.
async fn relay(client: TcpStream, upstream: TcpStream, shared: &Shared) -> Result<(), String> {
    let (cr, mut cw) = client.into_split();
    let (ur, mut uw) = upstream.into_split();
    let (mut cr, mut ur) = (BufReader::new(cr), BufReader::new(ur));
    loop {
        let Some((request, head)) = read_message(&mut cr, true).await? else { return Ok(()) };
        let key = header(&head, HOLD);
        uw.write_all(&request).await.map_err(|e| e.to_string())?;
        let Some((response, _)) = read_message(&mut ur, false).await? else { return Ok(()) };
        if let Some(key) = key {
            shared.held.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_insert(Held::Waiting);
            let released = async {
                loop {
                    let wake = shared.changed.notified();
                    if shared.held.lock().unwrap_or_else(|p| p.into_inner()).get(&key) == Some(&Held::Released) {
                        return;
                    }
                    wake.await;
                }
            };
            if tokio::time::timeout(HOLD_AT_MOST, released).await.is_err() {
                eprintln!("reorder proxy: {key:?} was never released; delivered after {HOLD_AT_MOST:?}");
            }
        }
        cw.write_all(&response).await.map_err(|e| e.to_string())?;
    }
}

/// The value of header `name` in a message head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

/// One whole message (head and body, raw) and its head as text; `None` at a clean end of stream.
/// Bodies: `Content-Length`, chunked, none (requests without either; 1xx/204/304), or up to the
/// end of the stream.
async fn read_message<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    request: bool,
) -> Result<Option<(Vec<u8>, String)>, String> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if raw.is_empty() { Ok(None) } else { Err("the stream ended inside a head".into()) };
        }
        if raw.len() > MAX_HEAD {
            return Err("head too large".into());
        }
        if &raw[before..] == b"\r\n" || &raw[before..] == b"\n" {
            break;
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status =
        if request { 0 } else { head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0) };
    let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        let start = raw.len();
        raw.resize(start + len, 0);
        r.read_exact(&mut raw[start..]).await.map_err(|e| e.to_string())?;
    } else if chunked {
        loop {
            let start = raw.len();
            r.read_until(b'\n', &mut raw).await.map_err(|e| e.to_string())?;
            let size_line = String::from_utf8_lossy(&raw[start..]).into_owned();
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let at = raw.len();
                    r.read_until(b'\n', &mut raw).await.map_err(|e| e.to_string())?;
                    if raw[at..].iter().all(|b| *b == b'\r' || *b == b'\n') {
                        break;
                    }
                }
                break;
            }
            let at = raw.len();
            raw.resize(at + size + 2, 0);
            r.read_exact(&mut raw[at..]).await.map_err(|e| e.to_string())?;
        }
    } else if !request && status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    }
    Ok(Some((raw, head)))
}
