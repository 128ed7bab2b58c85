//! A pool whose states hold a secret beside bytes a third party chose turns compression off
//! (`cookie.compress: false`, `--compress-state false`): a compressed state's length would tell
//! whether those bytes repeat the secret (SECURITY.md). Its cookies then carry each state at its
//! full size, and a failover restores it all the same.

mod support;

use std::time::Duration;

use handover_lab::demo_app::CountReply;
use handover_lab::localpool::{LocalPool, PoolOptions, SessionClient};
use http::{Method, StatusCode};
use support::exe;

/// A session's cookies, in characters, after it stored 2 400 bytes of base64 noise (6 bits of
/// entropy a character: deflate makes it about three quarters); within the default 4 KiB of
/// response header either way.
async fn cookie_chars_for_a_blob(pool: &LocalPool, client: &mut SessionClient) -> usize {
    let owner = pool.pods[0].data();
    let reply = client.send(|| Some(owner), Method::POST, "/blob?bytes=2400").await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK);
    let name = pool.cookie_name();
    client.jar.iter().filter(|(n, _)| n.starts_with(&name)).map(|(_, v)| v.len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_sealed_uncompressed_take_their_full_size_and_are_restored() {
    let compressed = LocalPool::start(PoolOptions::new(exe(), 1)).await.expect("pool starts");
    let deflated = cookie_chars_for_a_blob(&compressed, &mut SessionClient::default()).await;
    drop(compressed);

    let mut opts = PoolOptions::new(exe(), 2);
    opts.sidecar_args = vec!["--compress-state".into(), "false".into()];
    let mut pool = LocalPool::start(opts).await.expect("pool starts");
    let mut client = SessionClient::default();
    let plain = cookie_chars_for_a_blob(&pool, &mut client).await;
    // Sealed plain: the state's 2 400-odd bytes in base64, 4 characters for 3.
    assert!(plain >= 3_200, "{plain} characters of cookies for a 2 400-byte state sealed plain");
    assert!(deflated + 300 <= plain, "{deflated} characters deflated: the default compresses");

    pool.kill_pod(0).await;
    pool.wait_sidecars_see(&[1], Duration::from_secs(10)).await.expect("pod 1 alone is listed");
    let survivor = pool.pods[1].data();
    client.disconnect();
    let reply = client.send(|| Some(survivor), Method::GET, "/count").await.expect("reply");
    let served: CountReply = serde_json::from_slice(&reply.body).expect("a count");
    assert_eq!((served.pod.as_str(), served.blob_bytes), (pool.pods[1].name.as_str(), 2_400), "restored whole");
}
