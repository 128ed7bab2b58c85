//! A real nginx in front of local pools: any `location` blocks (a caching proxy, an ingress that
//! routes paths to pools), or an ingress with ingress-nginx's defaults over a pool's pods.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::daemon::{Daemon, tool_or_skip};

/// The nginx binary; without one, says loudly that `what` did not run (or fails, when
/// `HANDOVER_REQUIRE_NGINX` is set, as CI sets it).
pub fn nginx_or_skip(what: &str) -> Option<PathBuf> {
    tool_or_skip(&["nginx", "/usr/sbin/nginx"], "-v", "HANDOVER_REQUIRE_NGINX", "apt-get install -y nginx-light", what)
}

/// An nginx started by the test; killed on drop (one process: `master_process off`).
pub struct Nginx {
    pub addr: SocketAddr,
    daemon: Daemon,
}

fn config(dir: &Path, port: u16, http: &str, server: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache keys_zone=shared:1m;
    {http}
    server {{
        listen 127.0.0.1:{port};
        {server}
    }}
}}
"#
    )
}

/// The header limits and upstream settings of ingress-nginx's generated `nginx.conf` at its
/// ConfigMap defaults (`docs/limits.md` has the sources): the response head from a pod must fit
/// `proxy_buffer_size` (4k, else 502 "upstream sent too big header"), one request header line a
/// buffer of `large_client_header_buffers` (8k, else 400 "Request Header Or Cookie Too Large").
pub const INGRESS_NGINX_DEFAULTS: &str = r#"
    client_header_buffer_size 1k;
    large_client_header_buffers 4 8k;
    proxy_buffering off;
    proxy_buffer_size 4k;
    proxy_buffers 4 4k;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 5s;
    proxy_read_timeout 60s;
    proxy_send_timeout 60s;
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries 3;
    keepalive_timeout 75s;
    keepalive_requests 1000;
"#;

impl Nginx {
    /// Starts nginx with `locations` inside its one `server` block (a cache zone `shared` is
    /// defined) and waits until it accepts connections.
    pub async fn start(bin: &Path, locations: &str) -> Nginx {
        Nginx::start_with(bin, "", locations).await
    }

    /// Starts nginx with `http` at the `http` level and `server` inside its one `server` block.
    pub async fn start_with(bin: &Path, http: &str, server: &str) -> Nginx {
        let daemon = Daemon::start("nginx", "error.log", |dir, port| {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config(dir, port, http, server)).expect("write nginx.conf");
            let mut cmd = Command::new(bin);
            cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
            cmd
        })
        .await;
        Nginx { addr: daemon.addr, daemon }
    }

    /// An ingress at ingress-nginx's defaults, balancing round-robin over `pods` with keep-alive
    /// connections to them (as ingress-nginx balances over a Service's endpoints).
    pub async fn ingress_defaults(bin: &Path, pods: &[SocketAddr]) -> Nginx {
        Nginx::ingress(bin, pods, "4k").await
    }

    /// The same ingress with its `proxy-buffer-size` raised to `proxy_buffer_size` (e.g. `16k`),
    /// as a user who raised it in the ConfigMap has it.
    pub async fn ingress(bin: &Path, pods: &[SocketAddr], proxy_buffer_size: &str) -> Nginx {
        let defaults = INGRESS_NGINX_DEFAULTS
            .replace("proxy_buffer_size 4k;", &format!("proxy_buffer_size {proxy_buffer_size};"))
            .replace("proxy_buffers 4 4k;", &format!("proxy_buffers 4 {proxy_buffer_size};"));
        let servers: String = pods.iter().map(|p| format!("server {p};\n")).collect();
        let http = format!(
            "{defaults}\n upstream pool {{\n{servers} keepalive 320;\n keepalive_timeout 60s;\n keepalive_requests 10000;\n }}"
        );
        Nginx::start_with(bin, &http, "location / { proxy_pass http://pool; }").await
    }

    /// Whether nginx still runs and listens on its port.
    pub fn listening(&mut self) -> bool {
        self.daemon.listening()
    }

    /// The warnings and errors of nginx's log so far (why it answered 502 or 400).
    pub fn error_log(&self) -> String {
        let log = std::fs::read_to_string(self.daemon.dir.join("error.log")).unwrap_or_default();
        let serious = ["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"];
        log.lines().filter(|l| serious.iter().any(|s| l.contains(s))).collect::<Vec<_>>().join("\n")
    }
}
