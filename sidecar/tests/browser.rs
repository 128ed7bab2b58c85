//! Headless Chromium (Debian's `chromium`, driven by `playwright-core`, never a downloaded
//! browser) against a local pool: static assets and a home page get no cookie; a session gets one
//! when the app gives it state; a payment provider's cross-site form POST back to the shop arrives
//! without the `SameSite=Lax` cookie, is served as a fresh session, and leaves the browser's
//! cookie as it was — the cart survives the return. And two pools under one host (behind an nginx
//! ingress) keep their sessions while the browser goes back and forth between them. And a cart
//! filled by 4 parallel `fetch`es at a time behind nginx with ingress-nginx's defaults keeps every
//! acknowledged add while the pods that own it are SIGKILLed (issue 13). And an upload the app
//! answers before reading it (then closing) gets the app's answer, not a 502 nor a reset.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`), node, and
//! `npm install --prefix sidecar/tests/browser`. Without them the test says so loudly and passes,
//! unless `HANDOVER_REQUIRE_BROWSER=1` (then it fails). With `HANDOVER_NETLOG_DIR=<dir>`, each
//! browser writes its net log there (`launch.mjs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod support;
use support::exe;

use handover_lab::localpool::{LocalPool, PoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The browser tests take turns: each holds this for its whole run, its pools included (see
/// [`browser_turn`]).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_browser() -> Option<String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("no /usr/bin/chromium (apt-get install -y chromium)".into());
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("no node".into());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("no playwright-core (npm install --prefix sidecar/tests/browser)".into());
    }
    None
}

/// A payment provider's page: for any request, a form that posts itself back to `shop`'s
/// `/return` at once. Served until the task is dropped.
async fn serve_payment_provider(shop: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the provider");
    let addr = listener.local_addr().expect("provider address");
    let page = format!(
        "<!doctype html><form method=\"POST\" action=\"http://{shop}/return\">\
         <input name=\"PaRes\" value=\"eJzLSM3JyVcozy/KSQEAGgQEXQ\"><input name=\"MD\" value=\"42\"></form>\
         <script>document.forms[0].submit()</script>"
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let page = page.clone();
            tokio::spawn(async move {
                // Read the request head (bounded), answer, close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// This test's turn to run, held for its whole run (its pools included), or `None` when the
/// browser tests cannot run here: says loudly why not (or fails, with `HANDOVER_REQUIRE_BROWSER`
/// set). One test at a time: Chromium watches the host's addresses, and a request it is
/// connecting when one changes fails with `ERR_NETWORK_CHANGED`; a pool adds its bridge's address
/// when it starts and removes it when it ends, so another test's pool coming or going did that to
/// this test's browser now and then.
async fn browser_turn(what: &str) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if let Some(why) = missing_browser() {
        support::skip_or_fail("HANDOVER_REQUIRE_BROWSER", &format!("{what} did NOT run: {why}"));
        return None;
    }
    Some(ONE_AT_A_TIME.lock().await)
}

/// Runs a script of `sidecar/tests/browser` with `args`; its one line of JSON.
async fn run_script(script: &str, args: &[String]) -> serde_json::Value {
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .current_dir(browser_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser script ends within 90 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_its_cookie_across_a_cross_site_payment_return() {
    let Some(_turn) = browser_turn("the Chromium cross-site return test").await else {
        return;
    };
    let pool = LocalPool::start(PoolOptions::new(exe(), 1)).await.expect("pool starts");
    let shop = pool.pods[0].data();
    let (pay, _provider) = serve_payment_provider(shop).await;
    assert_ne!(shop.ip(), pay.ip(), "the provider must be another site than the shop");

    let seen =
        run_script("cross_site.mjs", &[format!("http://{shop}"), format!("http://{pay}"), pool.cookie_name()]).await;

    assert_eq!(seen["cookiesAfterStaticAndHome"], 0, "a stylesheet and the home page minted no session: {seen}");
    assert_eq!(seen["countBeforeReturn"], 2, "{seen}");
    assert_eq!(seen["sameSite"], "Lax", "the route, the small state inside it: {seen}");
    assert_eq!(seen["returnBody"]["count"], 0, "the cross-site POST came without the cookie: {seen}");
    assert_eq!(seen["cookieAfterReturn"], seen["cookieBefore"], "the return did not overwrite the cookie: {seen}");
    assert_eq!(seen["countAfterReturn"], 3, "the cart survived the return: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_its_session_beside_the_sites_own_cookies_in_utf8_and_nameless() {
    let Some(_turn) = browser_turn("the Chromium site-cookies test").await else {
        return;
    };
    let pool = LocalPool::start(PoolOptions::new(exe(), 1)).await.expect("pool starts");
    let shop = pool.pods[0].data();

    let seen = run_script("site_cookies.mjs", &[format!("http://{shop}"), pool.cookie_name()]).await;

    let holds = seen["browserHolds"].as_array().expect("the browser's cookie names");
    assert!(holds.contains(&"lang".into()) && holds.contains(&"".into()), "both cookies were set: {seen}");
    // The sidecar once read the whole Cookie field as ASCII text: one UTF-8 cookie made it drop
    // the field, and with it the session's cookies, on every request.
    assert_eq!(seen["counts"], serde_json::json!([1, 2, 3]), "the session went on: {seen}");
    assert_eq!(seen["sessions"], 1, "{seen}");
    // And it rebuilt the app's field from `name=value` pairs only, dropping a nameless cookie.
    let app_cookie = seen["appCookie"].as_array().expect("the app's Cookie fields");
    assert_eq!(app_cookie.len(), 1, "one field: {seen}");
    let field = app_cookie[0].as_str().expect("a field");
    let mut parts: Vec<&str> = field.split("; ").collect();
    parts.sort_unstable();
    assert_eq!(parts, ["lang=Fran\u{e7}ais", "nameless"], "the site's cookies as sent, none of the session's: {seen}");
    assert_eq!(seen["sessionCookieSeenByApp"], false, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_gets_the_apps_own_answer_to_an_upload_the_app_refuses_before_reading_it() {
    let Some(_turn) = browser_turn("the Chromium early-answer test").await else {
        return;
    };
    let pool = LocalPool::start(PoolOptions::new(exe(), 1)).await.expect("pool starts");
    let shop = pool.pods[0].data();

    // 5 MB each: the demo app answers 400 after 1 MiB of an `/incr` body and closes.
    let seen = run_script("early_answer.mjs", &[format!("http://{shop}"), "8".into(), "5000000".into()]).await;

    let answers = seen["answers"].as_array().expect("the answers");
    assert_eq!(answers.len(), 8, "{seen}");
    for answer in answers {
        let answer = answer.as_str().expect("an answer");
        assert!(answer.starts_with("400 cannot read the body: over 1048576 bytes"), "the app's own answer: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_the_sessions_of_two_pools_under_one_host() {
    let Some(_turn) = browser_turn("the Chromium two-pools test").await else {
        return;
    };
    let Some(nginx) = support::nginx_or_skip("the Chromium two-pools test") else {
        return;
    };
    let start = |pool: &str| {
        let mut opts = PoolOptions::new(exe(), 1);
        opts.pool = pool.to_owned();
        LocalPool::start(opts)
    };
    let shop = start("shop/web").await.expect("pool starts");
    let account = start("shop/account").await.expect("pool starts");
    let route = |prefix: &str, to: SocketAddr| {
        format!(
            "location /{prefix}/ {{ proxy_pass http://{to}/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}"
        )
    };
    let locations = format!("{}\n{}", route("shop", shop.pods[0].data()), route("account", account.pods[0].data()));
    let ingress = support::Nginx::start(&nginx, &locations).await;

    let seen = run_script("two_pools.mjs", &[format!("http://{}", ingress.addr)]).await;
    assert_eq!(seen["counts"]["shop"], serde_json::json!([1, 2, 3]), "{seen}");
    assert_eq!(seen["counts"]["account"], serde_json::json!([1, 2, 3]), "{seen}");
    let mut names: Vec<String> = seen["cookies"]
        .as_array()
        .expect("cookies")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = vec![shop.cookie_name(), account.cookie_name()];
    expected.sort();
    assert_eq!(names, expected, "each pool's route (its small state inside), none for the stylesheets: {seen}");
    for pool in [&shop, &account] {
        assert_eq!(pool.metric("handover_cookie_rejects_total").await, 0.0, "no pool refused the other's cookie");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_every_acknowledged_add_with_parallel_fetches_while_owners_are_killed() {
    use tokio::io::AsyncBufReadExt;
    let Some(_turn) = browser_turn("the Chromium parallel-fetch test").await else {
        return;
    };
    let Some(nginx) = support::nginx_or_skip("the Chromium parallel-fetch test") else {
        return;
    };
    const BATCHES: usize = 40;
    const KILL_EVERY: usize = 4;
    let mut pool = LocalPool::start(PoolOptions::new(exe(), 3)).await.expect("pool starts");
    let live = |pool: &LocalPool| -> Vec<SocketAddr> { pool.running().iter().map(|i| pool.pods[*i].data()).collect() };
    let mut ingress = support::Nginx::ingress_defaults(&nginx, &live(&pool)).await;
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir().join("parallel_cart.mjs"))
        .args([format!("http://{}", ingress.addr), "4".to_owned()])
        .current_dir(browser_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("stdout")).lines();
    // `None`: the script ended (its error is on stderr, above).
    let mut next_line = async || -> Option<serde_json::Value> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the browser script printed its next line within 60 s")
            .expect("read the script's output")?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    };
    let ended_early = |ingress: &mut support::Nginx| {
        let state = if ingress.listening() { "still runs and listens" } else { "no longer listens" };
        panic!("the script ended early; the ingress it was sent to, {}, {state}", ingress.addr)
    };
    let mut last = serde_json::Value::Null;
    for batch in 0..BATCHES {
        last = match next_line().await {
            Some(line) => line,
            None => ended_early(&mut ingress),
        };
        if batch % KILL_EVERY == KILL_EVERY - 1 {
            // The batch's responses all arrived, in whatever order: the browser holds whichever
            // cookie came last. Its owner dies now; a new pod replaces it, and the ingress
            // follows the pool's endpoints.
            let owner = last["pod"].as_str().expect("an owner").to_owned();
            let i = pool.pods.iter().position(|p| p.name == owner).expect("the owner is a pod of the pool");
            pool.kill_pod(i).await;
            pool.add_pod().await.expect("a new pod replaces the killed one");
            ingress = support::Nginx::ingress_defaults(&nginx, &live(&pool)).await;
        }
        let command = if batch + 1 == BATCHES { "end" } else { "next" };
        let go = format!("{command} http://{}\n", ingress.addr);
        stdin.write_all(go.as_bytes()).await.expect("tell the script to go on");
    }
    let end = match next_line().await {
        Some(line) => line,
        None => ended_early(&mut ingress),
    };
    let (acked, failed) = (last["acked"].as_u64().expect("acked"), last["failed"].as_u64().expect("failed"));
    let fin = end["final"].as_u64().unwrap_or_else(|| panic!("the cart was not served at the end: {end}"));
    assert!(
        fin >= acked,
        "{} acknowledged adds lost: the cart has {fin}, {acked} were acknowledged ({last})",
        acked - fin
    );
    assert!(fin <= acked + failed, "the cart has {fin}: more than acknowledged {acked} + unanswered {failed}");
}
