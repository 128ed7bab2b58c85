//! The demo application: a per-session counter (plus an optional blob, to make states large) that
//! implements the handover contract. It keeps sessions in memory only, like the apps handover is
//! for: kill it and its sessions are gone, unless the sidecar restores them.
//!
//! - `POST /incr` adds one to the session's counter (after reading its body, if any); `GET /count`
//!   reads it.
//! - `GET /headers`: the request headers as the app received them (JSON), to check the sidecar's
//!   header hygiene.
//! - `POST /blob?bytes=N` stores N bytes of noise in the session (large states).
//! - `POST /cart?bytes=N` stores a shopping cart of about N bytes of JSON in the session: a large
//!   state whose keys and words repeat, as apps' states do.
//! - `POST /login`: a privilege change: pushes the state and asks for a new session id
//!   (`Handover-Rotate`), against session fixation.
//! - `POST /clear` forgets the session and pushes an empty state: the sidecar deletes the cookie.
//! - `GET /static/<name>`: a fixed file that needs no session (and gets no cookie).
//! - `GET /visit?cache=public|s-maxage|none`: counts a visit (state, pushed) on a page whose
//!   `Cache-Control` says a shared cache may store it (`public, max-age=3600`, `s-maxage=600`, or
//!   none at all: cacheable by default), as a careless app or framework marks a personal page.
//! - `POST /return`: a cross-site form post back to the site (a payment, SAML or OIDC
//!   `form_post` return): reads its body and the session's count, changes nothing.
//! - push: every change puts the new state in `Handover-State`, with its format in
//!   `Handover-State-Format` (`--state-format`, also on `GET <statePath>`); a restore whose
//!   `Handover-State-Format` is not among `--reads-formats` is refused with `415` (a 4xx: the
//!   sidecar starts a fresh session), as a rollback that cannot read a newer release's state does;
//!   every answer of the state endpoint says what it reads (`Handover-Reads`), so a takeover the
//!   app cannot read goes to a pod whose app can.
//! - `GET /stats`: how many sessions the app holds (`{"sessions": N}`).
//! - `DELETE <statePath>`: the session left this pod; forgotten.
//! - `GET <statePath>` / `PUT <statePath>`: pull and restore, on a listener of their own
//!   (`--state-listen`, the pod's loopback) that the sidecar never forwards clients to.
//! - `GET /echo` with `Upgrade: echo`: switches protocols and echoes bytes (upgrade pass-through).
//! - `GET /download?mib=N` (any method): N MiB (at most 64) of `x`, a large answer such as a file
//!   or an export: what a client that stops reading holds up (the sidecar's send timeout).
//! - `POST /hog?mib=N`: allocates N MiB (at most 4096) and never frees them, so that tests can
//!   drive the app past its memory limit (the kernel's OOM killer then ends it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use handover_common::sync;
use handover_dataplane::proxy::{
    FORMAT_HEADER, INSTANCE_HEADER, READS_HEADER, ROTATE_HEADER, SESSION_HEADER, STATE_HEADER,
};
use handover_dataplane::server::ConnLimits;
use handover_dataplane::upstream::{Body, full, read_at_most};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoAppArgs {
    /// Address to listen on.
    #[arg(long, env = "DEMO_APP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the state endpoint (the sidecar's `--state-addr`): keep it on loopback.
    #[arg(long, env = "DEMO_APP_STATE_LISTEN", default_value = "127.0.0.1:8081")]
    pub state_listen: SocketAddr,
    /// Name shown in responses (the pod name).
    #[arg(long, env = "HANDOVER_POD_NAME", default_value = "demo")]
    pub name: String,
    /// Push the state on every change (`Handover-State`); without it the sidecar must pull.
    #[arg(long, env = "DEMO_APP_PUSH", default_value_t = true, action = clap::ArgAction::Set)]
    pub push: bool,
    #[arg(long, env = "HANDOVER_STATE_PATH", default_value = "/handover/state")]
    pub state_path: String,
    /// Answer the first N restores with `--refuse-restores-status` (to test how a failed or
    /// refused restore is handled).
    #[arg(long, default_value_t = 0)]
    pub refuse_restores: u64,
    /// The status of a refused restore: 5xx is a failure (the sidecar retries), 4xx a verdict ("this
    /// state is not for me": the sidecar starts a fresh session).
    #[arg(long, default_value_t = 500)]
    pub refuse_restores_status: u16,
    /// The format of the states this app writes, declared with each (`Handover-State-Format`).
    #[arg(long, default_value = "counter-v1")]
    pub state_format: String,
    /// The state formats this app reads, comma-separated (empty: only `--state-format`); a restore
    /// of any other is refused with 415.
    #[arg(long, default_value = "")]
    pub reads_formats: String,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Name this process on every answer of the state endpoint (`Handover-Instance`, new at each
    /// start): the sidecar then tells a restart from an idle connection closed. `false`: an app of
    /// the contract without it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub report_instance: bool,
    /// Close keep-alive connections idle this long (many apps do, after some seconds).
    #[arg(long, default_value = "30s", value_parser = handover_common::duration::parse)]
    pub idle_timeout: Duration,
    /// The client port's queue of connections not yet accepted (`listen(2)`'s backlog; tokio's
    /// 1024 by default, Tomcat's `acceptCount` 100). Once full, the kernel drops new connections'
    /// SYNs and their connects wait for a retransmission: what a burst of new connections meets
    /// at a busy app.
    #[arg(long, default_value_t = 1024)]
    pub listen_backlog: u32,
}

/// One session's state, as the app serializes it for handover.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionState {
    pub count: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blob: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cart: Vec<CartItem>,
}

/// An item of the session's shopping cart (`POST /cart`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CartItem {
    pub sku: String,
    pub name: String,
    pub qty: u32,
    pub price_cents: u32,
}

/// A cart whose items' JSON takes at most `bytes`, a comma each (items are added while the next
/// one fits).
pub fn cart_of(bytes: usize) -> Vec<CartItem> {
    let mut items = Vec::new();
    let mut len = 0;
    for i in 0u32.. {
        let item = CartItem {
            sku: format!("SKU-{:05}", i * 37),
            name: format!("Item number {i}"),
            qty: i % 5 + 1,
            price_cents: 199 + i * 50,
        };
        let item_len = serde_json::to_string(&item).map_or(usize::MAX, |json| json.len() + 1);
        if len + item_len > bytes {
            return items;
        }
        len += item_len;
        items.push(item);
    }
    items
}

/// What `/incr` and `/count` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct CountReply {
    pub count: u64,
    /// Length of the session's blob.
    #[serde(default)]
    pub blob_bytes: usize,
    pub pod: String,
    pub session: String,
}

struct App {
    args: DemoAppArgs,
    /// This process's `Handover-Instance`.
    instance: http::HeaderValue,
    restores_refused: std::sync::atomic::AtomicU64,
    sessions: Mutex<HashMap<String, SessionState>>,
}

/// The number in the query's `name=N` (the query being just that), or 0.
fn query_number<B>(req: &Request<B>, name: &str) -> usize {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix(name))
        .and_then(|q| q.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

impl App {
    /// Whether this app reads states of `format` (a restore that declares none: the app's own).
    fn reads(&self, format: Option<&str>) -> bool {
        let Some(format) = format else { return true };
        match self.args.reads_formats.trim() {
            "" => format == self.args.state_format,
            list => list.split(',').any(|f| f.trim() == format),
        }
    }

    /// `Handover-Reads`: the formats this app reads, on every answer of its state endpoint.
    fn reads_header(&self) -> Option<http::HeaderValue> {
        let list = match self.args.reads_formats.trim() {
            "" => self.args.state_format.as_str(),
            list => list,
        };
        http::HeaderValue::from_str(list).ok()
    }

    fn format_header(&self) -> Option<http::HeaderValue> {
        http::HeaderValue::from_str(&self.args.state_format).ok()
    }

    fn state_header(&self, state: &SessionState) -> Option<http::HeaderValue> {
        if !self.args.push {
            return None;
        }
        let json = serde_json::to_vec(state).unwrap_or_default();
        http::HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(json)).ok()
    }

    /// Changes the session's state (creating it), and returns the new state.
    fn update(&self, session: &str, change: impl FnOnce(&mut SessionState)) -> SessionState {
        let mut sessions = sync::lock(&self.sessions);
        let state = sessions.entry(session.to_owned()).or_default();
        change(state);
        state.clone()
    }

    /// The count reply after a change, with the new state pushed (when the app pushes).
    fn changed_reply(&self, session: &str, state: &SessionState) -> Response<Body> {
        let mut resp = self.count_reply(session, state);
        if let Some(v) = self.state_header(state) {
            resp.headers_mut().insert(STATE_HEADER, v);
            if let Some(f) = self.format_header() {
                resp.headers_mut().insert(FORMAT_HEADER, f);
            }
        }
        resp
    }

    fn count_reply(&self, session: &str, state: &SessionState) -> Response<Body> {
        let body = serde_json::to_vec(&CountReply {
            count: state.count,
            blob_bytes: state.blob.len(),
            pod: self.args.name.clone(),
            session: session.to_owned(),
        })
        .unwrap_or_default();
        let mut resp = reply(StatusCode::OK, body);
        resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        resp
    }

    /// The state endpoint's listener: every answer names this process's instance.
    async fn handle_state(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let reads = self.reads_header();
        let instance = self.args.report_instance.then(|| self.instance.clone());
        let mut resp = self.answer_state(req).await;
        if let Some(reads) = reads {
            resp.headers_mut().insert(READS_HEADER, reads);
        }
        if let Some(id) = instance {
            resp.headers_mut().insert(INSTANCE_HEADER, id);
        }
        resp
    }

    /// `GET`/`PUT`/`DELETE <statePath>` and nothing else.
    async fn answer_state(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let Some(session) = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            return reply(StatusCode::BAD_REQUEST, "no Handover-Session header\n");
        };
        if req.uri().path() != self.args.state_path {
            return reply(StatusCode::NOT_FOUND, "state endpoint: GET/PUT <statePath>\n");
        }
        match *req.method() {
            Method::GET => match sync::lock(&self.sessions).get(&session) {
                Some(state) => {
                    let mut resp = reply(StatusCode::OK, serde_json::to_vec(state).unwrap_or_default());
                    if let Some(f) = self.format_header() {
                        resp.headers_mut().insert(FORMAT_HEADER, f);
                    }
                    resp
                }
                None => reply(StatusCode::NOT_FOUND, Bytes::new()),
            },
            Method::PUT => {
                let refused = self.restores_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if refused < self.args.refuse_restores {
                    let status = StatusCode::from_u16(self.args.refuse_restores_status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return reply(status, "this app refuses restores for now (--refuse-restores)\n");
                }
                let format = req.headers().get(FORMAT_HEADER).and_then(|v| v.to_str().ok());
                if !self.reads(format) {
                    let (format, mine) = (format.unwrap_or_default(), &self.args.state_format);
                    return reply(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("state format {format} is not read by this release (it writes {mine})\n"),
                    );
                }
                let body = match read_at_most(req.into_body(), 1 << 20).await {
                    Ok(b) => b,
                    Err(e) => {
                        return reply(StatusCode::BAD_REQUEST, format!("cannot read the state: {e}\n"));
                    }
                };
                match serde_json::from_slice::<SessionState>(&body) {
                    Ok(state) => {
                        sync::lock(&self.sessions).insert(session, state);
                        reply(StatusCode::NO_CONTENT, Bytes::new())
                    }
                    Err(e) => reply(StatusCode::BAD_REQUEST, format!("not a state of this app: {e}\n")),
                }
            }
            Method::DELETE => {
                // The session left this pod (its cookie expired, or another pod owns it now).
                sync::lock(&self.sessions).remove(&session);
                reply(StatusCode::NO_CONTENT, Bytes::new())
            }
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        }
    }

    async fn handle(self: Arc<Self>, mut req: Request<Body>) -> Response<Body> {
        if req.uri().path() == "/echo" && req.headers().contains_key(header::UPGRADE) {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = reply(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            resp.headers_mut().insert(header::UPGRADE, http::HeaderValue::from_static("echo"));
            resp.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
            return resp;
        }
        let Some(session) = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            return reply(
                StatusCode::BAD_REQUEST,
                "no Handover-Session header: call this app through the handover sidecar\n",
            );
        };
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        match (method, path.as_str()) {
            (Method::POST, "/incr") => {
                if let Err(e) = read_at_most(req.into_body(), 1 << 20).await {
                    return reply(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}\n"));
                }
                let state = self.update(&session, |s| s.count += 1);
                self.changed_reply(&session, &state)
            }
            (Method::GET, "/count") => {
                let state = sync::lock(&self.sessions).get(&session).cloned().unwrap_or_default();
                self.count_reply(&session, &state)
            }
            (Method::POST, "/blob") => {
                let bytes = query_number(&req, "bytes").min(1 << 20);
                let mut noise = vec![0u8; bytes.div_ceil(4) * 3];
                handover_dataplane::random::fill(&mut noise);
                let mut blob = URL_SAFE_NO_PAD.encode(noise);
                blob.truncate(bytes);
                let state = self.update(&session, |s| s.blob = blob);
                self.changed_reply(&session, &state)
            }
            (Method::POST, "/cart") => {
                let cart = cart_of(query_number(&req, "bytes").min(1 << 20));
                let state = self.update(&session, |s| s.cart = cart);
                self.changed_reply(&session, &state)
            }
            (_, "/download") => reply(StatusCode::OK, vec![b'x'; query_number(&req, "mib").min(64) << 20]),
            (Method::POST, "/hog") => {
                let mib = query_number(&req, "mib").min(4096);
                // Non-zero bytes: every page is written, so the memory is resident, not just mapped.
                let held: &'static mut [u8] = vec![1u8; mib << 20].leak();
                std::hint::black_box(held);
                reply(StatusCode::OK, format!("holding {mib} MiB more, for good\n"))
            }
            (Method::POST, "/login") => {
                let state = self.update(&session, |_| {});
                let mut resp = self.changed_reply(&session, &state);
                resp.headers_mut().insert(ROTATE_HEADER, http::HeaderValue::from_static("1"));
                resp
            }
            (Method::POST, "/clear") => {
                sync::lock(&self.sessions).remove(&session);
                let mut resp = reply(StatusCode::NO_CONTENT, Bytes::new());
                if self.args.push {
                    resp.headers_mut().insert(STATE_HEADER, http::HeaderValue::from_static(""));
                }
                resp
            }
            (Method::GET, "/visit") => {
                let cache_control = match req.uri().query() {
                    Some("cache=public") => Some("public, max-age=3600"),
                    Some("cache=s-maxage") => Some("s-maxage=600"),
                    _ => None,
                };
                let state = self.update(&session, |s| s.count += 1);
                let mut resp = self.changed_reply(&session, &state);
                if let Some(cc) = cache_control {
                    resp.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static(cc));
                }
                resp
            }
            (Method::POST, "/return") => {
                if let Err(e) = read_at_most(req.into_body(), 1 << 20).await {
                    return reply(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}\n"));
                }
                let state = sync::lock(&self.sessions).get(&session).cloned().unwrap_or_default();
                self.count_reply(&session, &state)
            }
            (Method::GET, p) if p.starts_with("/static/") => {
                let mut resp = reply(StatusCode::OK, "body { color: #333 }\n");
                resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/css"));
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, http::HeaderValue::from_static("public, max-age=3600"));
                resp
            }
            (Method::GET, "/stats") => {
                let sessions = sync::lock(&self.sessions).len();
                let mut resp = reply(StatusCode::OK, format!("{{\"sessions\":{sessions}}}"));
                resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                resp
            }
            (Method::GET, "/headers") => {
                let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
                for (name, value) in req.headers() {
                    seen.entry(name.to_string())
                        .or_default()
                        .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                }
                let mut resp = reply(StatusCode::OK, serde_json::to_vec(&seen).unwrap_or_default());
                resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                // Which protocol the sidecar spoke to the app (`--app-protocol`).
                if let Ok(v) = http::HeaderValue::from_str(&format!("{:?}", req.version())) {
                    resp.headers_mut().insert("demo-app-version", v);
                }
                resp
            }
            (Method::GET, "/") => {
                let count = sync::lock(&self.sessions).get(&session).map(|s| s.count).unwrap_or(0);
                reply(
                    StatusCode::OK,
                    format!("pod {} — session {session} — count {count}\nPOST /incr to count\n", self.args.name),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "demo app: POST /incr, GET /count, POST /blob?bytes=N, POST /cart?bytes=N, POST /login, POST /clear, POST /return, GET /visit, GET /static/<name>, GET /download?mib=N, POST /hog?mib=N\n",
            ),
        }
    }
}

/// A listener on `addr` whose queue of connections not yet accepted holds `backlog`.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves the demo app until SIGTERM or SIGINT (as pid 1 of a container, a process without a
/// handler would never see SIGTERM, and every graceful pod deletion would wait its whole grace
/// period).
pub async fn run(args: DemoAppArgs) -> Result<(), String> {
    let listener =
        listen(args.listen, args.listen_backlog).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let state_listener = tokio::net::TcpListener::bind(args.state_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.state_listen))?;
    tracing::info!(listen = %args.listen, state = %args.state_listen, name = %args.name, push = args.push, "demo app started");
    // An idle connection, new or kept alive, is closed at the idle timeout (as many apps do).
    let limits =
        ConnLimits { header_timeout: args.idle_timeout, keepalive_timeout: args.idle_timeout, ..ConnLimits::LOCAL };
    let instance = http::HeaderValue::from_str(&handover_dataplane::random::session_id())
        .map_err(|e| format!("an instance id: {e}"))?;
    let app =
        Arc::new(App { args, instance, restores_refused: Default::default(), sessions: Mutex::new(HashMap::new()) });
    let state_app = Arc::clone(&app);
    tokio::spawn(handover_dataplane::server::serve(
        state_listener,
        move |req, _| Arc::clone(&state_app).handle_state(req),
        std::future::pending(),
        Duration::ZERO,
        limits,
        Default::default(),
    ));
    handover_dataplane::server::serve(
        listener,
        move |req, _| Arc::clone(&app).handle(req),
        handover_dataplane::server::shutdown_signal(),
        Duration::from_secs(1),
        limits,
        Default::default(),
    )
    .await;
    Ok(())
}
