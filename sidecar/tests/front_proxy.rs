//! A proxy in front of the sidecar: the client addresses it records, and the connections it keeps
//! open to the sidecar. ingress-nginx keeps its idle
//! upstream connections for 60 s (`upstream-keepalive-timeout`), AWS's ALB for 60 s; if the sidecar
//! closes one first, a request the proxy sends on it as it closes is lost, and nginx does not
//! retry a `POST` elsewhere: its client gets a 502. So the sidecar keeps an idle keep-alive
//! connection for `--keepalive-timeout` (75 s), longer than those, whatever its header timeout.
//!
//! Needs nginx and HAProxy (`apt-get install -y nginx-light haproxy`); without them the tests say
//! so loudly and pass, unless `HANDOVER_REQUIRE_NGINX` or `HANDOVER_REQUIRE_HAPROXY` is set.

use std::collections::BTreeMap;
use std::time::Duration;

mod support;
use support::client::{Conn, Jar};
use support::{Haproxy, Nginx, haproxy_or_skip, nginx_or_skip, pool_with};

use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_on_nginx_s_pooled_connections_after_pauses_around_the_header_timeout_are_never_a_502() {
    let Some(bin) = nginx_or_skip("the front proxy keep-alive test") else {
        return;
    };
    // A short header timeout: with it as the keep-alive timeout too (as before `--keepalive-timeout`
    // existed), about one of these requests in thirty met the sidecar's close and got nginx's 502.
    let pool = pool_with(1, &["--header-timeout", "100ms"], &[]).await;
    let ingress = Nginx::ingress_defaults(&bin, &[pool.pods[0].data()]).await;
    let mut conn = Conn::new(ingress.addr, Duration::from_secs(10));
    let jar = Jar::default();
    let mut statuses = BTreeMap::new();
    const REQUESTS: u64 = 150;
    for i in 0..REQUESTS {
        let answer = conn.send(&jar, Method::POST, "/incr", &[]).await.expect("nginx answers");
        *statuses.entry(answer.status).or_insert(0u64) += 1;
        if answer.status == 200 {
            assert_eq!(answer.count().expect("a count").count, statuses[&200], "the session goes on");
        }
        // Pauses swept across the header timeout, 95 to 105 ms, so that nginx sends requests on
        // its pooled connection at about the moment a close at the header timeout would come.
        tokio::time::sleep(Duration::from_micros(95_000 + (i % 21) * 500)).await;
    }
    assert_eq!(statuses, BTreeMap::from([(200, REQUESTS)]), "nginx's errors:\n{}", ingress.error_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_s_forwardfor_the_app_finds_every_recorded_address_in_order() {
    let Some(bin) = haproxy_or_skip("the X-Forwarded-For test behind HAProxy") else {
        return;
    };
    // HAProxy's `option forwardfor` adds its own X-Forwarded-For field after the client's. An app
    // that trusts its two proxies (HAProxy and the sidecar) reads the third address from the right:
    // it must be the one HAProxy recorded, never the client's claim.
    let pool = pool_with(1, &[], &[]).await;
    let front = Haproxy::start_forwarding_for(&bin, &[pool.pods[0].data()]).await;
    let mut conn = Conn::new(front.addr, Duration::from_secs(10));
    let answer = conn
        .send(&Jar::default(), Method::GET, "/headers", &[("x-forwarded-for", "203.0.113.9")])
        .await
        .expect("HAProxy answers");
    assert_eq!(answer.status, 200, "HAProxy's log:\n{}", front.log());
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_slice(&answer.body).expect("the app's headers");
    let fields = seen.get("x-forwarded-for").cloned().unwrap_or_default();
    assert_eq!(fields.len(), 1, "one field reaches the app: {fields:?}");
    let hops: Vec<&str> = fields[0].split(", ").collect();
    // The client's claim; the test's client as HAProxy saw it (HAProxy listens on 127.0.0.1);
    // HAProxy as the sidecar saw it.
    assert_eq!(hops.len(), 3, "{fields:?}");
    assert_eq!(&hops[..2], ["203.0.113.9", "127.0.0.1"], "{fields:?}");
    assert!(hops[2].parse::<std::net::IpAddr>().is_ok(), "{fields:?}");
}
