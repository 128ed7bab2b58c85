//! A client of one session as a browser is: one cookie jar shared by several keep-alive
//! connections, each request sending the jar as it is when the request leaves, each response's
//! `Set-Cookie` applied when that response arrives — so responses that arrive out of order leave
//! the jar with whatever arrived last.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A cookie jar: name → value (path, domain and expiry are not modelled; `Max-Age=0` deletes).
pub type Jar = Arc<Mutex<BTreeMap<String, String>>>;

/// A jar holding `cookies`.
pub fn jar_with(cookies: BTreeMap<String, String>) -> Jar {
    Arc::new(Mutex::new(cookies))
}

/// The jar's state chunks of cookie `name` (`name.0`, `name.1`, …).
pub fn state_chunks(jar: &Jar, name: &str) -> BTreeMap<String, String> {
    let jar = jar.lock().unwrap_or_else(|p| p.into_inner());
    jar.iter()
        .filter(|(n, _)| n.strip_prefix(name).is_some_and(|rest| rest.starts_with('.')))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// A response as the client received it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The `Handover-Warning` the sidecar attached (a state it did not seal), if any.
    pub fn warning(&self) -> Option<String> {
        self.headers.get("handover-warning").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The demo app's count reply.
    pub fn count(&self) -> Result<handover_lab::demo_app::CountReply, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("not a count reply ({e}): {} {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    /// Bytes of our `Set-Cookie` lines.
    pub fn set_cookie_bytes(&self) -> usize {
        self.headers.get_all(header::SET_COOKIE).iter().map(|v| v.len()).sum()
    }
}

/// Applies a response's `Set-Cookie` lines to `jar`.
pub fn store_cookies(jar: &Jar, headers: &HeaderMap) {
    let mut jar = jar.lock().unwrap_or_else(|p| p.into_inner());
    for line in headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
        let mut parts = line.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            continue;
        };
        if parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0")) {
            jar.remove(name.trim());
        } else {
            jar.insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }
}

/// The `Cookie` line for `jar`, as a browser sends it (one line, `; ` between pairs).
pub fn cookie_line(jar: &Jar) -> Option<String> {
    let jar = jar.lock().unwrap_or_else(|p| p.into_inner());
    (!jar.is_empty()).then(|| jar.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; "))
}

/// One keep-alive connection to `addr` (a proxy in front of the pool), reconnected when lost.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Conn {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Conn {
        Conn { addr, sender: None, timeout }
    }

    /// Sends one request with the jar's cookies and `extra` headers; stores the response's
    /// cookies in the jar on arrival. A lost connection is an error (the caller decides whether
    /// to retry); the next request connects again.
    pub async fn send(
        &mut self,
        jar: &Jar,
        method: Method,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let addr = self.addr;
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))?
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let mut builder = Request::builder().method(method).uri(path).header(header::HOST, "shop.example");
        if let Some(line) = cookie_line(jar) {
            builder = builder.header(header::COOKIE, line);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let Some(sender) = self.sender.as_mut() else { return Err("not connected".into()) };
        let outcome = tokio::time::timeout(self.timeout, async {
            sender.ready().await?;
            let (parts, body) = sender.send_request(req).await?.into_parts();
            Ok::<_, hyper::Error>((parts, body.collect().await?.to_bytes()))
        })
        .await;
        match outcome {
            Ok(Ok((parts, body))) => {
                store_cookies(jar, &parts.headers);
                Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
            }
            Ok(Err(e)) => {
                self.sender = None;
                Err(format!("request to {addr} failed: {e}"))
            }
            Err(_) => {
                self.sender = None;
                Err(format!("no answer from {addr} within {:?}", self.timeout))
            }
        }
    }
}
