package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"k8s.io/klog/v2"
)

// podNetwork owns the bridge and hands out pod addresses on it.
type podNetwork struct {
	bridge   string
	nsPrefix string // network namespace name prefix, unique to this agent
	subnet   *net.IPNet
	gateway  net.IP
	prefix   int

	mu   sync.Mutex
	used map[string]bool
}

func newPodNetwork(bridge, cidr, nsPrefix string) (*podNetwork, error) {
	_, subnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR: %w", err)
	}
	ones, bits := subnet.Mask.Size()
	if bits != 32 || ones > 29 {
		return nil, fmt.Errorf("pod CIDR %s: need an IPv4 network of /29 or larger", cidr)
	}
	gw := nextIP(subnet.IP.To4())
	if nsPrefix == "" {
		return nil, fmt.Errorf("empty network namespace prefix")
	}
	return &podNetwork{bridge: bridge, nsPrefix: nsPrefix, subnet: subnet, gateway: gw, prefix: ones,
		used: map[string]bool{gw.String(): true}}, nil
}

func nextIP(ip net.IP) net.IP {
	n := make(net.IP, 4)
	copy(n, ip.To4())
	for i := 3; i >= 0; i-- {
		n[i]++
		if n[i] != 0 {
			break
		}
	}
	return n
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupBridge creates the bridge with the gateway address (idempotent).
func (n *podNetwork) setupBridge() error {
	if _, err := net.InterfaceByName(n.bridge); err != nil {
		if err := ipCmd("link", "add", n.bridge, "type", "bridge"); err != nil {
			return err
		}
	}
	addr := fmt.Sprintf("%s/%d", n.gateway, n.prefix)
	out, _ := exec.Command("ip", "-o", "addr", "show", "dev", n.bridge).CombinedOutput()
	if !strings.Contains(string(out), " "+addr+" ") {
		if err := ipCmd("addr", "add", addr, "dev", n.bridge); err != nil {
			return err
		}
	}
	if err := ipCmd("link", "set", n.bridge, "up"); err != nil {
		return err
	}
	// Routed traffic from pods (to Service IPs, to the host's other addresses) needs forwarding.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		klog.Warningf("cannot enable ip_forward: %v", err)
	}
	return nil
}

// cleanupStale kills processes in and deletes namespaces left by an earlier agent.
func (n *podNetwork) cleanupStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], n.nsPrefix) {
			continue
		}
		klog.Infof("removing stale pod network namespace %s", f[0])
		killNetnsProcesses(f[0])
		_ = ipCmd("netns", "del", f[0])
	}
}

func killNetnsProcesses(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, s := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(s); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (n *podNetwork) allocate() (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ip := nextIP(n.gateway); n.subnet.Contains(ip); ip = nextIP(ip) {
		if ip[3] == 255 {
			break
		}
		if !n.used[ip.String()] {
			n.used[ip.String()] = true
			return ip, nil
		}
	}
	return nil, fmt.Errorf("pod network %s is full", n.subnet)
}

func (n *podNetwork) release(ip net.IP) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.used, ip.String())
}

// sandbox is one pod's network namespace.
type sandbox struct {
	ns   string
	veth string
	ip   net.IP
}

// createSandbox makes a namespace named after the pod UID with a veth onto the bridge.
func (n *podNetwork) createSandbox(uid string) (*sandbox, error) {
	id := strings.ReplaceAll(uid, "-", "")
	if len(id) > 10 {
		id = id[:10]
	}
	sb := &sandbox{ns: n.nsPrefix + id, veth: "vh" + id}
	ip, err := n.allocate()
	if err != nil {
		return nil, err
	}
	sb.ip = ip
	// Leftovers of an earlier attempt for the same pod.
	_ = exec.Command("ip", "netns", "del", sb.ns).Run()
	_ = exec.Command("ip", "link", "del", sb.veth).Run()
	steps := [][]string{
		{"netns", "add", sb.ns},
		{"link", "add", sb.veth, "type", "veth", "peer", "name", "eth0", "netns", sb.ns},
		{"link", "set", sb.veth, "master", n.bridge},
		// A pod reaching itself through a Service IP needs its packets sent back out of its own port.
		{"link", "set", sb.veth, "type", "bridge_slave", "hairpin", "on"},
		{"link", "set", sb.veth, "up"},
		{"-n", sb.ns, "addr", "add", fmt.Sprintf("%s/%d", ip, n.prefix), "dev", "eth0"},
		{"-n", sb.ns, "link", "set", "lo", "up"},
		{"-n", sb.ns, "link", "set", "eth0", "up"},
		{"-n", sb.ns, "route", "add", "default", "via", n.gateway.String()},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			n.deleteSandbox(sb)
			return nil, err
		}
	}
	return sb, nil
}

// hostSandbox is the "sandbox" of a hostNetwork pod: the host's network, the node's IP.
func (n *podNetwork) hostSandbox() *sandbox { return &sandbox{ip: n.gateway} }

// command runs "self args..." in the sandbox's network namespace and a private
// mount namespace of its own.
func (sb *sandbox) command(self string, args ...string) []string {
	if sb.ns == "" {
		return append([]string{"unshare", "--mount", "--propagation", "private", self}, args...)
	}
	return append([]string{"ip", "netns", "exec", sb.ns, self}, args...)
}

func (n *podNetwork) deleteSandbox(sb *sandbox) {
	if sb.ns == "" {
		return
	}
	killNetnsProcesses(sb.ns)
	_ = exec.Command("ip", "link", "del", sb.veth).Run()
	if err := exec.Command("ip", "netns", "del", sb.ns).Run(); err != nil {
		klog.Warningf("deleting netns %s: %v", sb.ns, err)
	}
	n.release(sb.ip)
}
