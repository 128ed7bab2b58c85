package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/klog/v2"
)

var probeClient = &http.Client{
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// port resolves a numeric or named container port.
func port(c *corev1.Container, p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("no container port named %q", p.StrVal)
}

// podSnap is an immutable view of a pod for goroutines outside its worker.
type podSnap struct {
	pod   *corev1.Pod
	sb    *sandbox
	podIP string
}

func httpGet(ctx context.Context, s podSnap, c *corev1.Container, h *corev1.HTTPGetAction) error {
	n, err := port(c, h.Port)
	if err != nil {
		return err
	}
	host := h.Host
	if host == "" {
		host = s.podIP
	}
	scheme := "http"
	if h.Scheme == corev1.URISchemeHTTPS {
		scheme = "https"
	}
	path := h.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(n)), path), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.34")
	for _, hd := range h.HTTPHeaders {
		req.Header.Set(hd.Name, hd.Value)
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return nil
}

// execIn runs cmd inside the container's namespaces and mounts, as a probe or hook.
func (w *podWorker) execIn(ctx context.Context, s podSnap, c *ctr, env []string, argv []string, gen int, what string) error {
	if s.sb == nil {
		return fmt.Errorf("pod has no sandbox")
	}
	mounts, err := w.mounts(s.pod, &c.spec)
	if err != nil {
		return err
	}
	specPath := filepath.Join(w.dir, "specs", fmt.Sprintf("%s-%d-%s.json", c.spec.Name, gen, what))
	if err := writeJSON(specPath, initSpec{Mounts: mounts, Argv: argv, Env: env, Dir: c.spec.WorkingDir, Hostname: hostname(s.pod)}); err != nil {
		return err
	}
	run := s.sb.command(w.a.self, "container-init", specPath)
	cmd := exec.CommandContext(ctx, run[0], run[1:]...)
	logf, err := os.OpenFile(filepath.Join(w.dir, "logs", c.spec.Name+"."+what+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		defer logf.Close()
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	return cmd.Run()
}

func (w *podWorker) check(ctx context.Context, s podSnap, c *ctr, env []string, gen int, what string, h corev1.ProbeHandler) error {
	switch {
	case h.HTTPGet != nil:
		return httpGet(ctx, s, &c.spec, h.HTTPGet)
	case h.TCPSocket != nil:
		n, err := port(&c.spec, h.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = s.podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(n)))
		if err != nil {
			return err
		}
		return conn.Close()
	case h.Exec != nil:
		return w.execIn(ctx, s, c, env, h.Exec.Command, gen, what)
	}
	return fmt.Errorf("unsupported probe handler (node agent supports httpGet, tcpSocket, exec)")
}

func probeFor(c *corev1.Container, kind string) *corev1.Probe {
	switch kind {
	case "startup":
		return c.StartupProbe
	case "liveness":
		return c.LivenessProbe
	}
	return c.ReadinessProbe
}

func secs(v int32, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}

// scheduleProbes starts the probes that are due, each in its own goroutine.
func (w *podWorker) scheduleProbes() {
	now := time.Now()
	var s podSnap
	for _, c := range w.ctrs {
		if !c.running() || c.killing {
			continue
		}
		if c.spec.ReadinessProbe == nil && c.started {
			c.ready = true
		}
		for _, kind := range []string{"startup", "liveness", "readiness"} {
			p := probeFor(&c.spec, kind)
			if p == nil || (kind == "startup") == c.started {
				continue
			}
			if c.init && !c.sidecar {
				continue
			}
			ps := c.probes[kind]
			if ps == nil {
				ps = &probeState{next: c.proc.started.Add(time.Duration(p.InitialDelaySeconds) * time.Second)}
				c.probes[kind] = ps
			}
			if ps.inflight || now.Before(ps.next) {
				continue
			}
			if s.pod == nil {
				s = w.snap()
			}
			ps.inflight = true
			ps.next = now.Add(secs(p.PeriodSeconds, 10))
			go func(c *ctr, env []string, gen int, kind string, p *corev1.Probe) {
				ctx, cancel := context.WithTimeout(context.Background(), secs(p.TimeoutSeconds, 1))
				defer cancel()
				err := w.check(ctx, s, c, env, gen, kind+"-probe", p.ProbeHandler)
				r := probeResult{name: c.spec.Name, gen: gen, kind: kind, ok: err == nil}
				if err != nil {
					r.msg = err.Error()
				}
				select {
				case w.probeRes <- r:
				case <-w.quit:
				}
			}(c, c.env, c.gen, kind, p)
		}
	}
}

func (w *podWorker) handleProbe(r probeResult) {
	var c *ctr
	for _, x := range w.ctrs {
		if x.spec.Name == r.name {
			c = x
		}
	}
	if c == nil || !c.running() || c.gen != r.gen || c.killing {
		return
	}
	ps := c.probes[r.kind]
	p := probeFor(&c.spec, r.kind)
	if ps == nil || p == nil {
		return
	}
	ps.inflight = false
	success, failure := p.SuccessThreshold, p.FailureThreshold
	if success <= 0 {
		success = 1
	}
	if failure <= 0 {
		failure = 3
	}
	if r.ok {
		ps.successes++
		ps.failures = 0
	} else {
		ps.failures++
		ps.successes = 0
		klog.V(2).Infof("pod %s: %s probe of %s failed: %s", w.key(), r.kind, c.spec.Name, r.msg)
		w.a.events.Eventf(w.pod, corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %s", strings.ToUpper(r.kind[:1])+r.kind[1:], r.msg)
	}
	switch r.kind {
	case "startup":
		if ps.successes >= 1 {
			c.started = true
		} else if ps.failures >= failure {
			w.killForRestart(c, "startup probe failed: "+r.msg)
		}
	case "liveness":
		if ps.failures >= failure {
			w.killForRestart(c, "liveness probe failed: "+r.msg)
		}
	case "readiness":
		if ps.successes >= success {
			c.ready = true
		} else if ps.failures >= failure {
			c.ready = false
		}
	}
}

// killForRestart stops a container that failed its liveness or startup probe;
// its exit then goes through the restart policy.
func (w *podWorker) killForRestart(c *ctr, why string) {
	klog.Infof("pod %s: container %s %s, will be restarted", w.key(), c.spec.Name, why)
	w.a.events.Eventf(w.pod, corev1.EventTypeWarning, "Unhealthy", "Container %s %s", c.spec.Name, why)
	w.a.events.Eventf(w.pod, corev1.EventTypeNormal, "Killing", "Container %s %s, will be restarted", c.spec.Name, why)
	c.killing = true
	c.ready = false
	grace := w.gracePeriod()
	for _, p := range []*corev1.Probe{c.spec.LivenessProbe, c.spec.StartupProbe} {
		if p != nil && p.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*p.TerminationGracePeriodSeconds) * time.Second
		}
	}
	deadline := time.Now().Add(grace)
	s := w.snap()
	go func(c *ctr, p *process, env []string) {
		w.runPreStop(s, c, env, p.gen, deadline)
		p.stop(deadline)
	}(c, c.proc, c.env)
}

// runPreStop runs the container's preStop hook, bounded by deadline.
func (w *podWorker) runPreStop(s podSnap, c *ctr, env []string, gen int, deadline time.Time) {
	if c.spec.Lifecycle == nil || c.spec.Lifecycle.PreStop == nil {
		return
	}
	h := c.spec.Lifecycle.PreStop
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var err error
	switch {
	case h.Exec != nil:
		err = w.execIn(ctx, s, c, env, h.Exec.Command, gen, "prestop")
	case h.HTTPGet != nil:
		err = httpGet(ctx, s, &c.spec, h.HTTPGet)
	case h.Sleep != nil:
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		}
	}
	if err != nil {
		klog.Warningf("pod %s: preStop hook of %s: %v", w.key(), c.spec.Name, err)
	} else {
		klog.Infof("pod %s: preStop hook of %s done", w.key(), c.spec.Name)
	}
}
