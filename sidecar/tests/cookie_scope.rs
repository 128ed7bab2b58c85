//! Two pools under one host (an ingress routing `/shop` to one and `/account` to the other) never
//! refuse or overwrite each other's cookies: their cookies differ by name (the default, derived
//! from each pool) or by `Path` (`--cookie-path`), and one client's jar keeps both.

mod support;

use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{LocalPool, PoolOptions, SessionClient};
use http::Method;
use support::{Nginx, Scratch, curl_head, exe, field};

async fn pool_named(pool: &str, sidecar_args: &[&str]) -> LocalPool {
    let mut opts = PoolOptions::new(exe(), 1);
    opts.pool = pool.to_owned();
    opts.sidecar_args = sidecar_args.iter().map(|s| s.to_string()).collect();
    LocalPool::start(opts).await.expect("pool starts")
}

fn count_of(body: &[u8]) -> u64 {
    serde_json::from_slice::<CountReply>(body).expect("a count reply").count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_with_default_cookie_names_share_one_jar_without_collisions() {
    let shop = pool_named("shop/web", &[]).await;
    let account = pool_named("shop/account", &[]).await;
    assert_ne!(shop.cookie_name(), account.cookie_name(), "every pool names its cookie after itself");
    // One browser: one jar for the host, sent to both pools.
    let mut browser = SessionClient::default();
    for round in 1..=3u64 {
        for pool in [&shop, &account] {
            browser.disconnect();
            let addr = pool.pods[0].data();
            let reply = browser.send(|| Some(addr), Method::POST, "/incr").await.expect("reply");
            assert_eq!(count_of(&reply.body), round, "{}: the session went on", pool.cookie_name());
        }
    }
    let mut names: Vec<&String> = browser.jar.keys().collect();
    names.sort();
    // Each pool: its routing cookie, the small state inside it.
    let mut expected: Vec<String> = vec![shop.cookie_name(), account.cookie_name()];
    expected.sort();
    assert_eq!(names, expected.iter().collect::<Vec<_>>(), "each pool's own cookies");
    for pool in [&shop, &account] {
        assert_eq!(pool.metric("handover_cookie_rejects_total").await, 0.0, "no pool refused the other's cookie");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_under_one_host_keep_their_cookies_apart_by_path_in_curls_jar() {
    let Some(bin) = support::nginx_or_skip("the two-pools-under-one-ingress test") else {
        return;
    };
    // The same cookie name on purpose: only the Path keeps them apart.
    let shop = pool_named("shop/web", &["--cookie-name", "handover", "--cookie-path", "/shop"]).await;
    let account = pool_named("shop/account", &["--cookie-name", "handover", "--cookie-path", "/account"]).await;
    let ingress = Nginx::start(
        &bin,
        &format!(
            r#"
        location /shop/ {{ proxy_pass http://{}/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location /account/ {{ proxy_pass http://{}/; proxy_http_version 1.1; proxy_set_header Connection ""; }}"#,
            shop.pods[0].data(),
            account.pods[0].data()
        ),
    )
    .await;
    let dir = Scratch::new("jar");
    let jar = dir.join("jar");
    let jar = jar.to_str().expect("utf-8 path");
    for round in 1..=3u64 {
        for prefix in ["/shop", "/account"] {
            let url = format!("http://{}{prefix}/incr", ingress.addr);
            let (head, body) = curl_head(&["-b", jar, "-c", jar, "-X", "POST", &url]);
            assert_eq!(count_of(body.as_bytes()), round, "{prefix}: the session went on: {head:?}");
            if round == 1 {
                let set = field(&head, "set-cookie");
                assert!(set.iter().all(|c| c.contains(&format!("Path={prefix};"))), "{prefix}: {set:?}");
            }
        }
    }
    let text = std::fs::read_to_string(jar).expect("curl wrote its jar");
    let paths: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && l.contains('\t'))
        .filter_map(|l| l.split('\t').nth(2))
        .collect();
    assert_eq!(paths.len(), 2, "a route (the small state inside) per path:\n{text}");
    assert_eq!(paths.iter().filter(|p| **p == "/shop").count(), 1, "{text}");
    for pool in [&shop, &account] {
        assert_eq!(pool.metric("handover_cookie_rejects_total").await, 0.0, "no pool got the other's cookie");
    }
}
