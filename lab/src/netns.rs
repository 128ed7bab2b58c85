//! Network namespaces for local pods: each pod gets its own namespace, its own IP on a bridge and
//! its own `localhost`, like a pod on a node. Needs root and iproute2; [`Network::detect`] falls
//! back to loopback addresses when either is missing.
//!
//! A pod's namespace outlives its processes, as a pod sandbox outlives its containers: a client
//! that connects to a dead pod is refused at once. Everything goes when the pool is dropped.
//!
//! Names carry the creating process id, so namespaces left by a killed run are recognised and
//! removed by the next one.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

/// Prefix of every namespace and bridge this module creates.
const PREFIX: &str = "hp";

/// Held while a new bridge's subnet is chosen and its address added.
const SUBNET_LOCK: &str = "/run/handover-netns.lock";

/// A random 10.x.y.0/24 with no address of the host in it, from 10.200.0.0 – 10.249.255.0 (clear
/// of the usual pod, service and docker ranges).
fn free_subnet() -> Result<[u8; 2], String> {
    for _ in 0..64 {
        let mut r = [0u8; 2];
        handover_dataplane::random::fill(&mut r);
        let subnet = [200 + r[0] % 50, r[1]];
        let prefix = format!("10.{}.{}.0/24", subnet[0], subnet[1]);
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "to", &prefix])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!("ip addr show to {prefix}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        if out.stdout.is_empty() {
            return Ok(subnet);
        }
    }
    Err("no free 10.x.y.0/24 subnet in 64 tries".to_owned())
}

/// Runs `ip` with `args`; the error carries what `ip` printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `ip` arguments that keep `dev` without an IPv6 link-local address when it comes up (the pods
/// speak IPv4). Chromium watches the host's addresses and fails a request it is connecting with
/// `ERR_NETWORK_CHANGED` when one changes: the link-local addresses of pods' veths coming up showed
/// in the browser tests' net logs as address changes in the middle of their requests, and failed
/// one now and then.
fn no_link_local(dev: &str) -> [&str; 6] {
    ["link", "set", "dev", dev, "addrgenmode", "none"]
}

/// A bridge with one network namespace per pod attached to it.
#[derive(Debug)]
pub struct Bridge {
    id: String,
    subnet: [u8; 2],
    owner_pid: u32,
}

impl Bridge {
    /// Creates a bridge on a 10.x.y.0/24 no other interface of the host uses (the host takes .254).
    pub fn create() -> Result<Bridge, String> {
        remove_stale();
        // Choosing a subnet and claiming it is one step for every pool of the host (threads of a
        // test binary, other processes): two bridges given the same subnet both get a route to
        // it, the kernel uses the first, and the second pool's pods are unreachable.
        let lock = std::fs::File::create(SUBNET_LOCK).map_err(|e| format!("cannot open {SUBNET_LOCK}: {e}"))?;
        lock.lock().map_err(|e| format!("cannot lock {SUBNET_LOCK}: {e}"))?;
        let mut r = [0u8; 3];
        handover_dataplane::random::fill(&mut r);
        let id = format!("{:02x}{:02x}{:02x}", r[0], r[1], r[2]);
        let bridge = Bridge { id, subnet: free_subnet()?, owner_pid: std::process::id() };
        let name = bridge.bridge_name();
        ip(&["link", "add", &name, "type", "bridge"])?;
        let host = format!("10.{}.{}.254/24", bridge.subnet[0], bridge.subnet[1]);
        let setup = ip(&no_link_local(&name))
            .and_then(|()| ip(&["addr", "add", &host, "dev", &name]))
            .and_then(|()| ip(&["link", "set", &name, "up"]));
        if let Err(e) = setup {
            let _ = ip(&["link", "del", &name]);
            return Err(e);
        }
        Ok(bridge)
    }

    fn bridge_name(&self) -> String {
        format!("{PREFIX}{}", self.id)
    }

    /// The namespace of pod `index`.
    pub fn namespace(&self, index: u8) -> String {
        format!("{PREFIX}-{}-{}-{index}", self.owner_pid, self.id)
    }

    /// The IP of pod `index`.
    pub fn pod_ip(&self, index: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.subnet[0], self.subnet[1], index))
    }

    /// Creates pod `index`'s namespace, wired to the bridge, with `lo` up.
    pub fn add_pod(&self, index: u8) -> Result<(), String> {
        let ns = self.namespace(index);
        let host_end = format!("{PREFIX}{}v{index}", self.id);
        let pod_end = format!("{PREFIX}{}p{index}", self.id);
        let addr = format!("{}/24", self.pod_ip(index));
        let gateway = format!("10.{}.{}.254", self.subnet[0], self.subnet[1]);
        ip(&["netns", "add", &ns])?;
        let steps: [&[&str]; 10] = [
            &["link", "add", &host_end, "type", "veth", "peer", "name", &pod_end],
            &no_link_local(&host_end),
            &["link", "set", &pod_end, "netns", &ns],
            &["-n", &ns, "link", "set", &pod_end, "name", "eth0"],
            &["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
            &["-n", &ns, "link", "set", "eth0", "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
            &["-n", &ns, "route", "add", "default", "via", &gateway],
            &["link", "set", &host_end, "master", &self.bridge_name()],
            &["link", "set", &host_end, "up"],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                let _ = ip(&["link", "del", &host_end]);
                let _ = ip(&["netns", "del", &ns]);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let prefix = format!("{PREFIX}-{}-{}-", self.owner_pid, self.id);
        for ns in namespaces().into_iter().filter(|n| n.starts_with(&prefix)) {
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = ip(&["link", "del", &self.bridge_name()]);
    }
}

fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes namespaces and bridges of runs whose process is gone.
fn remove_stale() {
    for ns in namespaces() {
        let mut parts = ns.splitn(4, '-');
        let (Some(PREFIX), Some(pid), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &ns]);
            let _ = ip(&["link", "del", &format!("{PREFIX}{id}")]);
        }
    }
}

/// The 127.x.y.0/24 blocks of this process's live loopback pools.
static LOOPBACK_BLOCKS: std::sync::Mutex<Vec<[u8; 2]>> = std::sync::Mutex::new(Vec::new());

/// A 127.x.y.0/24 block of the loopback that no other pool of this process uses while this lives
/// (two pools on one block would bind the same pod addresses).
#[derive(Debug)]
pub struct LoopbackBlock {
    pub net: [u8; 2],
}

impl LoopbackBlock {
    fn claim() -> LoopbackBlock {
        let mut taken = handover_common::sync::lock(&LOOPBACK_BLOCKS);
        loop {
            let mut r = [0u8; 2];
            handover_dataplane::random::fill(&mut r);
            // 127.<100..227>.<x>.<pod>.
            let net = [100 + r[0] % 128, r[1]];
            if !taken.contains(&net) {
                taken.push(net);
                return LoopbackBlock { net };
            }
        }
    }
}

impl Drop for LoopbackBlock {
    fn drop(&mut self) {
        handover_common::sync::lock(&LOOPBACK_BLOCKS).retain(|n| *n != self.net);
    }
}

/// How local pods are networked.
#[derive(Debug)]
pub enum Network {
    /// Each pod on its own 127.x.y.z address of the host's loopback.
    Loopback(LoopbackBlock),
    /// Each pod in its own network namespace on a bridge.
    Namespaces(Bridge),
}

impl Network {
    /// Namespaces when this process may create them (root, iproute2) and `HANDOVER_NETNS` is not
    /// `0`; loopback addresses otherwise.
    pub fn detect() -> Network {
        let wanted = std::env::var("HANDOVER_NETNS").map(|v| v != "0").unwrap_or(true);
        if wanted && rustix::process::geteuid().is_root() {
            match Bridge::create() {
                Ok(bridge) => return Network::Namespaces(bridge),
                Err(e) => tracing::warn!(error = %e, "network namespaces unavailable; using loopback addresses"),
            }
        }
        Network::Loopback(LoopbackBlock::claim())
    }

    /// A short name for summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Network::Loopback(_) => "loopback",
            Network::Namespaces(_) => "namespaces",
        }
    }
}
