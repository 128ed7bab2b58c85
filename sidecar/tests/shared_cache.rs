//! A real caching nginx (`proxy_cache`) in front of a local pool, configured as a CDN that stores
//! responses with cookies (`proxy_ignore_headers Set-Cookie`) and gives responses without
//! `Cache-Control` a freshness of its own (`proxy_cache_valid`, like a heuristic): one client's
//! state cookie must never reach another client through it.
//!
//! Needs nginx (`apt-get install -y nginx-light`). Without it the test says so loudly and passes,
//! unless `HANDOVER_REQUIRE_NGINX=1` (then it fails).

mod support;
use support::exe;

use handover_lab::localpool::{LocalPool, PoolOptions};
use support::{Nginx, curl_head, field};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_nginx_never_hands_one_clients_state_cookie_to_another() {
    let Some(bin) = support::nginx_or_skip("the shared-cache test against a real caching nginx") else {
        return;
    };
    let pool = LocalPool::start(PoolOptions::new(exe(), 1)).await.expect("pool starts");
    let upstream = pool.pods[0].data();
    let nginx = Nginx::start(
        &bin,
        &format!(
            r#"
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache shared;
            # A freshness for responses that name none, as caches apply heuristics to them.
            proxy_cache_valid 200 10m;
            # Store responses that set cookies, as CDNs configured to cache everything do
            # (nginx's own default refuses them; many shared caches do not).
            proxy_ignore_headers Set-Cookie;
            add_header X-Cache-Status $upstream_cache_status always;
        }}"#
        ),
    )
    .await;
    let url = |path: &str| format!("http://{}{path}", nginx.addr);

    // The cache works: a public response with no session is stored and served again (and the
    // sidecar left it alone: no cookie, still public).
    let (first, _) = curl_head(&[&url("/static/site.css")]);
    let (again, _) = curl_head(&[&url("/static/site.css")]);
    assert_eq!(field(&again, "x-cache-status"), vec!["HIT"], "nginx caches public responses: {again:?}");
    assert!(field(&first, "set-cookie").is_empty() && field(&again, "set-cookie").is_empty());
    assert_eq!(field(&again, "cache-control"), vec!["public, max-age=3600"]);

    for variant in ["public", "s-maxage", "none"] {
        let page = url(&format!("/visit?cache={variant}"));
        let (a, _) = curl_head(&[&page]);
        let a_cookies = field(&a, "set-cookie");
        assert_eq!(
            a_cookies.len(),
            1,
            "{variant}: the first visitor gets a session (its route, the state inside): {a:?}"
        );

        // A second visitor, no cookie, same URL: never the first one's cookie.
        let (b, body) = curl_head(&[&page]);
        assert_ne!(field(&b, "x-cache-status"), vec!["HIT"], "{variant}: nginx served a stored state cookie");
        let b_cookies = field(&b, "set-cookie");
        assert!(
            a_cookies.iter().all(|c| !b_cookies.contains(c)),
            "{variant}: the second client got the first one's cookie"
        );
        assert_eq!(b_cookies.len(), 1, "{variant}: and a session of its own: {b:?}");
        assert!(body.contains("\"count\":1"), "{variant}: a fresh count, not the first visitor's page: {body}");

        // How: the sidecar made the page private to its client.
        let cache_control = field(&a, "cache-control").join(", ");
        assert!(cache_control.starts_with("private"), "{variant}: made private: {cache_control}");
        assert!(!cache_control.contains("public") && !cache_control.contains("s-maxage"), "{cache_control}");
        assert!(field(&a, "vary").iter().any(|v| v.eq_ignore_ascii_case("cookie")), "{variant}: {a:?}");

        // The first visitor comes back with its cookie: its resealed cookie is private too.
        let cookie: Vec<&str> = a_cookies.iter().filter_map(|c| c.split(';').next()).collect();
        let (back, body) = curl_head(&["-H", &format!("Cookie: {}", cookie.join("; ")), &page]);
        assert!(body.contains("\"count\":2"), "{variant}: the session went on: {body}");
        assert!(field(&back, "cache-control").join(", ").starts_with("private"), "{variant}: {back:?}");
    }
    assert!(pool.metric("handover_responses_made_private_total").await >= 6.0);
}
