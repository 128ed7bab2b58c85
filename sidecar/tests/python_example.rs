//! The Python example app (`examples/python-app/app.py`, standard library only) behind the real
//! sidecar binary: the contract works from another language. A client adds items to its cart
//! through the sidecar; the Python process is SIGKILLed and started again (an app container
//! restart), or its whole pod dies (a takeover by another pod); the next item lands in a cart that
//! still holds every item the client was acknowledged — restored from the client's cookie.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use handover_lab::localpool::{SessionClient, metric_sum, probe, scrape, wait_for};
use http::{Method, StatusCode};
use tokio::process::{Child, Command};

const SIDECAR_PORT: u16 = 8000;
const ADMIN_PORT: u16 = 9901;
const APP_PORT: u16 = 8080;
const STATE_PORT: u16 = 8081;
const POOL: &str = "shop/cart";
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the sidecar crate lives in the workspace").to_owned()
}

fn python() -> Option<&'static str> {
    std::process::Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "python3")
}

/// 127.<10..250>.<x>.1: a fresh loopback block per test, so tests that run in parallel (or other
/// processes on the machine) never share a port.
fn random_block() -> [u8; 2] {
    let mut b = [0u8; 2];
    handover_dataplane::random::fill(&mut b);
    [10 + b[0] % 240, b[1]]
}

/// The pods' logs and the key file, in a scratch directory kept when the test fails.
struct Files {
    dir: support::Scratch,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = support::Scratch::new(&format!("python-{name}"));
        let keygen = std::process::Command::new(env!("CARGO_BIN_EXE_handover-sidecar"))
            .arg("keygen")
            .output()
            .expect("keygen runs");
        assert!(keygen.status.success(), "keygen failed");
        std::fs::write(dir.join("keys"), &keygen.stdout).expect("write keys");
        Files { dir }
    }

    fn log(&self, name: &str) -> Stdio {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(name)).expect("log file");
        Stdio::from(file)
    }

    fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- {name}\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }
}

/// One pod: the sidecar and the Python cart on an address of its own.
struct Pod {
    name: String,
    ip: IpAddr,
    app: Option<Child>,
    sidecar: Option<Child>,
}

impl Pod {
    fn new(name: &str, block: [u8; 2], i: u8) -> Pod {
        Pod {
            name: name.to_owned(),
            ip: IpAddr::V4(Ipv4Addr::new(127, block[0], block[1], i)),
            app: None,
            sidecar: None,
        }
    }
    fn data(&self) -> SocketAddr {
        SocketAddr::new(self.ip, SIDECAR_PORT)
    }
    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, ADMIN_PORT)
    }
    fn app_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, APP_PORT)
    }
    fn state_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, STATE_PORT)
    }

    async fn start_app(&mut self, files: &Files) {
        let script = repo_root().join("examples/python-app/app.py");
        let child = Command::new(python().expect("python3"))
            .arg(&script)
            .args(["--listen", &self.app_addr().to_string()])
            .args(["--state-listen", &self.state_addr().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(files.log(&format!("{}.app.log", self.name)))
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        self.app = Some(child);
        let app = self.app_addr();
        let what = format!("the python app of {} on {app}", self.name);
        if let Err(e) =
            wait_for(&what, START_TIMEOUT, || async move { probe(app, "/healthz").await == Some(200) }).await
        {
            panic!("{e}\n{}", files.tail(&format!("{}.app.log", self.name)));
        }
    }

    async fn start_sidecar(&mut self, files: &Files, peers: &str) {
        let child = Command::new(env!("CARGO_BIN_EXE_handover-sidecar"))
            .arg("run")
            .args(["--listen", &self.data().to_string()])
            .args(["--admin", &self.admin().to_string()])
            .args(["--app", &self.app_addr().to_string()])
            .args(["--state-addr", &self.state_addr().to_string()])
            .arg(format!("--pool={POOL}"))
            .arg(format!("--pod-name={}", self.name))
            .arg("--key-file")
            .arg(files.dir.join("keys"))
            .arg(format!("--peers={peers}"))
            .args(["--mode", "push", "--cookie-secure", "false", "--workers", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(files.log(&format!("{}.sidecar.log", self.name)))
            .kill_on_drop(true)
            .spawn()
            .expect("the sidecar starts");
        self.sidecar = Some(child);
        let admin = self.admin();
        let what = format!("the sidecar of {} to be ready on {admin}", self.name);
        if let Err(e) =
            wait_for(&what, START_TIMEOUT, || async move { probe(admin, "/ready").await == Some(200) }).await
        {
            panic!("{e}\n{}", files.tail(&format!("{}.sidecar.log", self.name)));
        }
    }

    /// SIGKILL (what `start_kill` sends on Unix) and reap.
    async fn kill_app(&mut self) {
        kill(self.app.take()).await;
    }

    async fn kill_pod(&mut self) {
        kill(self.app.take()).await;
        kill(self.sidecar.take()).await;
    }
}

async fn kill(child: Option<Child>) {
    if let Some(mut child) = child {
        child.start_kill().expect("SIGKILL");
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("reaped").expect("wait");
        assert!(!status.success(), "killed, not exited");
    }
}

/// The cart as the client saw it in one response.
#[derive(Debug)]
struct Cart {
    session: String,
    items: BTreeMap<String, u64>,
}

fn cart_of(reply: &handover_lab::localpool::Reply) -> Cart {
    assert_eq!(reply.status, StatusCode::OK, "body: {}", String::from_utf8_lossy(&reply.body));
    assert!(reply.headers.get("handover-state").is_none(), "the sidecar strips the pushed state");
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("the cart is JSON");
    let items = json["items"]
        .as_object()
        .expect("items")
        .iter()
        .map(|(sku, qty)| (sku.clone(), qty.as_u64().expect("qty")))
        .collect();
    Cart { session: json["session"].as_str().expect("session").to_owned(), items }
}

async fn add(client: &mut SessionClient, to: SocketAddr, sku: &str, qty: u64) -> Cart {
    let reply = client
        .send(|| Some(to), Method::POST, &format!("/cart/items?sku={sku}&qty={qty}"))
        .await
        .unwrap_or_else(|e| panic!("adding {sku} through {to}: {e}"));
    cart_of(&reply)
}

fn expected(items: &[(&str, u64)]) -> BTreeMap<String, u64> {
    items.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect()
}

async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    metric_sum(&scrape(admin).await.unwrap_or_default(), prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cart_survives_a_sigkill_of_the_app_restored_from_the_cookie() {
    if python().is_none() {
        support::skip_or_fail_in_ci("python3 not found: the Python example did NOT run");
        return;
    }
    let files = Files::new("restart");
    let mut pod = Pod::new("cart-0", random_block(), 1);
    pod.start_app(&files).await;
    pod.start_sidecar(&files, "").await;
    let to = pod.data();

    let mut client = SessionClient::default();
    let first = add(&mut client, to, "apple", 2).await;
    let second = add(&mut client, to, "pear", 1).await;
    assert_eq!(first.session, second.session, "the cookie keeps the client in one session");
    assert_eq!(second.items, expected(&[("apple", 2), ("pear", 1)]));
    let name = handover_dataplane::cookie_attrs::default_name(POOL, false, "/", "");
    assert!(client.jar.contains_key(&name), "the client holds the state cookie {name}: {:?}", client.jar.keys());

    // The app container dies and comes back empty; the sidecar lives on.
    pod.kill_app().await;
    pod.start_app(&files).await;

    let after = add(&mut client, to, "plum", 3).await;
    assert_eq!(after.session, first.session, "same session after the restart");
    assert_eq!(
        after.items,
        expected(&[("apple", 2), ("pear", 1), ("plum", 3)]),
        "every acknowledged item is still in the cart\n{}",
        files.tail("cart-0.sidecar.log")
    );
    assert!(
        metric(pod.admin(), "handover_restores_total{result=\"ok\"}").await >= 1.0,
        "the cart came back through a restore (PUT /handover/state)"
    );

    // Reading does not change the cart, and the restored copy is what the app now serves.
    let read = client.send(|| Some(to), Method::GET, "/cart").await.expect("GET /cart");
    assert_eq!(cart_of(&read).items, after.items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cart_is_taken_over_by_another_pod_when_its_pod_dies() {
    if python().is_none() {
        support::skip_or_fail_in_ci("python3 not found: the Python example did NOT run");
        return;
    }
    let files = Files::new("takeover");
    let block = random_block();
    let mut a = Pod::new("cart-a", block, 1);
    let mut b = Pod::new("cart-b", block, 2);
    let peers = format!("{}@{},{}@{}", a.name, a.data(), b.name, b.data());
    for pod in [&mut a, &mut b] {
        pod.start_app(&files).await;
        pod.start_sidecar(&files, &peers).await;
    }

    let mut client = SessionClient::default();
    add(&mut client, a.data(), "book", 1).await;
    let before = add(&mut client, a.data(), "lamp", 2).await;
    assert_eq!(before.items, expected(&[("book", 1), ("lamp", 2)]));

    // Pod A dies whole (sidecar and app); the client's next connection lands on B.
    a.kill_pod().await;
    client.disconnect();

    let after = add(&mut client, b.data(), "pen", 5).await;
    assert_eq!(after.session, before.session, "same session on the other pod");
    assert_eq!(
        after.items,
        expected(&[("book", 1), ("lamp", 2), ("pen", 5)]),
        "the successor restored the cart from the cookie\n{}",
        files.tail("cart-b.sidecar.log")
    );
    assert!(metric(b.admin(), "handover_takeovers_total").await >= 1.0, "counted as a takeover");
}

/// One raw HTTP/1.1 exchange with the app (no sidecar): status and body.
async fn raw(app: SocketAddr, method: &str, path: &str, session: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = raw_with(app, method, path, session, &[], body).await;
    (status, body)
}

/// [`raw`] with more request headers, answering the response's header block too.
async fn raw_with(
    app: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app).await.expect("connect to the app");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    if let Some(s) = session {
        head.push_str(&format!("Handover-Session: {s}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the app answers in time")
        .expect("read");
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let status = std::str::from_utf8(&reply[9..12]).expect("status").parse().expect("status code");
    (status, String::from_utf8_lossy(&reply[..split]).into_owned(), reply[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cart_keeps_the_state_endpoint_contract() {
    if python().is_none() {
        support::skip_or_fail_in_ci("python3 not found: the Python example did NOT run");
        return;
    }
    let files = Files::new("contract");
    let mut pod = Pod::new("cart-c", random_block(), 1);
    pod.start_app(&files).await;
    let app = pod.state_addr();
    let state = br#"{"items":{"apple":2},"v":1}"#;

    // Pull: a session the app does not hold is a 404.
    assert_eq!(raw(app, "GET", "/handover/state", Some("s1"), b"").await.0, 404);
    // Restore is idempotent: the same bytes twice leave one cart, served back byte for byte.
    for _ in 0..2 {
        assert_eq!(raw(app, "PUT", "/handover/state", Some("s1"), state).await.0, 204);
    }
    let (status, pulled) = raw(app, "GET", "/handover/state", Some("s1"), b"").await;
    assert_eq!((status, pulled.as_slice()), (200, state.as_slice()));
    // State the app cannot read is refused with a 4xx: the sidecar drops it and starts a fresh session.
    for bad in [&b"not json"[..], br#"{"v":2,"items":{}}"#, br#"{"v":1,"items":{"apple":-1}}"#] {
        assert_eq!(
            raw(app, "PUT", "/handover/state", Some("s1"), bad).await.0,
            400,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(raw(app, "GET", "/handover/state", Some("s1"), b"").await.1, state, "a refused restore changes nothing");
    // The state's format: declared on a pull, checked on a restore before the bytes are read.
    let (_, head, _) = raw_with(app, "GET", "/handover/state", Some("s1"), &[], b"").await;
    assert!(head.lines().any(|l| l.eq_ignore_ascii_case("Handover-State-Format: cart-v1")), "{head}");
    let newer = [("Handover-State-Format", "cart-v2")];
    let (status, _, said) = raw_with(app, "PUT", "/handover/state", Some("s1"), &newer, state).await;
    assert_eq!(status, 415, "a format this release does not read");
    assert!(String::from_utf8_lossy(&said).contains("cart-v2"), "and it says which");
    let own = [("Handover-State-Format", "cart-v1")];
    assert_eq!(raw_with(app, "PUT", "/handover/state", Some("s1"), &own, state).await.0, 204);
    // A session that left this pod is forgotten (idempotent).
    for _ in 0..2 {
        assert_eq!(raw(app, "DELETE", "/handover/state", Some("s1"), b"").await.0, 204);
    }
    assert_eq!(raw(app, "GET", "/handover/state", Some("s1"), b"").await.0, 404, "the cart is gone");
    // The client port knows nothing of the state endpoint, and the state port nothing else.
    assert_eq!(raw(pod.app_addr(), "GET", "/handover/state", Some("s1"), b"").await.0, 404);
    assert_eq!(raw(pod.app_addr(), "PUT", "/handover/state", Some("s1"), state).await.0, 404);
    assert_eq!(raw(app, "POST", "/cart/items?sku=x", Some("s1"), b"").await.0, 404);
    // Without the sidecar's session header there is no session to speak of.
    assert_eq!(raw(pod.app_addr(), "GET", "/cart", None, b"").await.0, 400);
    pod.kill_app().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cart_login_rotates_the_session_id_and_keeps_the_cart() {
    if python().is_none() {
        support::skip_or_fail_in_ci("python3 not found: the Python example did NOT run");
        return;
    }
    let files = Files::new("login");
    let mut pod = Pod::new("cart-l", random_block(), 1);
    pod.start_app(&files).await;
    pod.start_sidecar(&files, "").await;
    let to = pod.data();

    let mut client = SessionClient::default();
    let before = add(&mut client, to, "apple", 2).await;
    let login = client.send(|| Some(to), Method::POST, "/login").await.expect("POST /login");
    assert!(login.headers.get("handover-rotate").is_none(), "the rotation request is not the client's business");
    let after = add(&mut client, to, "pear", 1).await;
    assert_ne!(after.session, before.session, "a new session id after the login");
    assert_eq!(after.items, expected(&[("apple", 2), ("pear", 1)]), "the cart came along");
    // The app was told the old id left: it holds no cart under it any more.
    let (status, _) = raw(pod.state_addr(), "GET", "/handover/state", Some(&before.session), b"").await;
    assert_eq!(status, 404, "the pre-login session is gone from the app");
    pod.kill_app().await;
}
