//! The command line as operators and newcomers use it: `demo`, `cookie inspect`, `keygen`.

mod support;

use std::process::Command;

use handover_dataplane::cookie::{self, Owner, Route};
use handover_dataplane::keys::KeyRing;
use support::Scratch;

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_handover-sidecar"))
}

#[test]
fn the_demo_runs_kills_pods_and_loses_nothing() {
    let out = exe()
        // Two requests in flight per session: a browser's parallel requests, one cookie jar.
        .args([
            "demo",
            "--pods",
            "3",
            "--sessions",
            "8",
            "--concurrency",
            "2",
            "--duration",
            "4s",
            "--kill-every",
            "1s",
        ])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("output");
    let summary: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(summary["lost_updates"], 0);
    assert_eq!(summary["concurrency"], 2);
    assert!(summary["pods_killed"].as_u64().expect("number") >= 1);
    assert!(summary["pods_terminated"].as_u64().expect("number") >= 1);
    assert!(summary["acknowledged_updates"].as_u64().expect("number") > 0);
    for field in ["sessions", "requests", "failovers", "takeovers", "failover_ms_p50", "failover_ms_p99"] {
        assert!(summary.get(field).is_some(), "summary has {field}");
    }
}

#[test]
fn cookie_inspect_opens_a_cookie_and_explains_a_refusal() {
    let dir = Scratch::new("cli-inspect");
    let key_file = dir.join("keys");
    let keygen = exe().args(["keygen", "--id", "7"]).output().expect("keygen");
    assert!(keygen.status.success());
    std::fs::write(&key_file, &keygen.stdout).expect("write keys");
    let ring = KeyRing::load(&key_file).expect("keygen writes a valid key line");
    let state = cookie::seal_state("s-42", 9, br#"{"count":3}"#, "shop/cart", &ring);
    let route = Route {
        session: "s-42".into(),
        owner: Owner { name: "cart-7".into(), uid: "u-1".into(), addr: "10.0.0.7:8000".into() },
        version: 9,
        state_version: 9,
        issued_at: 1,
        expires_at: u64::MAX / 2,
        chunks: 1,
        state_bytes: state.len() as u32,
        carry: 0,
        created_at: 1,
        ended: false,
        inline: None,
    };
    let value = cookie::seal_route(&route, "shop/cart", &ring);

    let out = exe()
        .args(["cookie", "inspect", "--pool", "shop/cart", "--key-file"])
        .arg(&key_file)
        .arg(format!("handover={value}; other=1; handover.0={state}"))
        .output()
        .expect("inspect runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["session"], "s-42");
    assert_eq!(report["owner"]["pod"], "cart-7");
    assert_eq!(report["version"], 9);
    assert_eq!(report["created_at"], 1);
    assert_eq!(report["state"]["utf8"], r#"{"count":3}"#);
    assert_eq!(report["state_in_route"], false);

    // A state inside the routing cookie (`--inline-state-bytes`): no chunk needed.
    let inline = Route {
        chunks: 0,
        state_bytes: 0,
        inline: Some(cookie::StoredState::new(br#"{"count":4}"#, "cart-v2")),
        ..route.clone()
    };
    let out = exe()
        .args(["cookie", "inspect", "--pool", "shop/cart", "--key-file"])
        .arg(&key_file)
        .arg(cookie::seal_route(&inline, "shop/cart", &ring))
        .output()
        .expect("inspect runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["state_in_route"], true);
    assert_eq!(report["state"]["utf8"], r#"{"count":4}"#);
    assert_eq!(report["state"]["format"], "cart-v2");

    // A Cookie header as a browser sends it for a pool with the default name: found by itself.
    for name in ["handover-5dff3eb8", "__Host-handover-5dff3eb8"] {
        let out = exe()
            .args(["cookie", "inspect", "--pool", "shop/cart", "--key-file"])
            .arg(&key_file)
            .arg(format!("other=1; {name}={value}; {name}.0={state}"))
            .output()
            .expect("inspect runs");
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(report["session"], "s-42", "{name}");
    }

    let out = exe()
        .args(["cookie", "inspect", "--pool", "shop/other", "--key-file"])
        .arg(&key_file)
        .arg(&value)
        .output()
        .expect("inspect runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong_pool"), "says why it refused");
}
