//! The connections a proxy in front keeps open to the sidecar. ingress-nginx keeps its idle
//! upstream connections for 60 s (`upstream-keepalive-timeout`), AWS's ALB for 60 s; if the sidecar
//! closes one first, a request the proxy sends on it as it closes is lost, and nginx does not
//! retry a `POST` elsewhere: its client gets a 502. So the sidecar keeps an idle keep-alive
//! connection for `--keepalive-timeout` (75 s), longer than those, whatever its header timeout.
//!
//! Needs nginx (`apt-get install -y nginx-light`); without it the test says so loudly and passes,
//! unless `HANDOVER_REQUIRE_NGINX` is set.

use std::collections::BTreeMap;
use std::time::Duration;

mod support;
use support::client::{Conn, Jar};
use support::{Nginx, nginx_or_skip, pool_with};

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
