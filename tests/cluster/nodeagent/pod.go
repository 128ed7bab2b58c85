package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

const tick = 200 * time.Millisecond

type probeState struct {
	next      time.Time
	inflight  bool
	successes int32
	failures  int32
}

// ctr is the node agent's record of one container of a pod.
type ctr struct {
	spec    corev1.Container
	init    bool // listed in initContainers
	sidecar bool // init container with restartPolicy Always

	gen          int
	proc         *process
	restartCount int32
	started      bool // startup probe passed (or none)
	ready        bool
	term         *corev1.ContainerStateTerminated // latest exit, while not running
	lastTerm     *corev1.ContainerStateTerminated // exit before the current/next instance
	restartDue   bool
	nextStart    time.Time
	backoff      time.Duration
	waitReason   string
	waitMessage  string
	killing      bool
	probes       map[string]*probeState
	env          []string // environment of the current instance, reused by exec probes and hooks
}

func (c *ctr) running() bool { return c.proc != nil }

type exitEvent struct {
	name string
	gen  int
}

type probeResult struct {
	name string
	gen  int
	kind string
	ok   bool
	msg  string
}

// podWorker runs one pod: a single goroutine owns all of its state.
type podWorker struct {
	a    *agent
	uid  types.UID
	ns   string
	name string

	// For kubectl exec and port-forward, served from other goroutines.
	execMu      sync.Mutex
	execTargets map[string]execTarget
	execIP      string

	mu       sync.Mutex
	next     *corev1.Pod
	gone     bool
	stopping bool
	notify   chan struct{}

	pod      *corev1.Pod
	dir      string
	sb       *sandbox
	vm       *volumeManager
	volsOK   bool
	lastVols time.Time
	setupErr string
	podIP    string
	retryAt  time.Time

	ctrs       []*ctr // init containers first, then app containers
	exits      chan exitEvent
	probeRes   chan probeResult
	quit       chan struct{}
	startTime  *metav1.Time
	initDone   bool
	terminal   corev1.PodPhase
	condTimes  map[corev1.PodConditionType]corev1.PodCondition
	lastSent   *corev1.PodStatus
	statusWait time.Time
}

func newPodWorker(a *agent, p *corev1.Pod) *podWorker {
	w := &podWorker{a: a, uid: p.UID, ns: p.Namespace, name: p.Name, execTargets: map[string]execTarget{},
		pod: p, notify: make(chan struct{}, 1),
		exits: make(chan exitEvent, 64), probeRes: make(chan probeResult, 64), quit: make(chan struct{}),
		condTimes: map[corev1.PodConditionType]corev1.PodCondition{}}
	w.dir = filepath.Join(a.cfg.stateDir, "pods", fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID))
	w.vm = newVolumeManager(a, filepath.Join(w.dir, "volumes"))
	restarts := map[string]int32{}
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		restarts[s.Name] = s.RestartCount
	}
	for _, c := range p.Spec.InitContainers {
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		w.ctrs = append(w.ctrs, &ctr{spec: c, init: true, sidecar: sidecar, restartCount: restarts[c.Name], probes: map[string]*probeState{}})
	}
	for _, c := range p.Spec.Containers {
		w.ctrs = append(w.ctrs, &ctr{spec: c, restartCount: restarts[c.Name], probes: map[string]*probeState{}})
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		w.terminal = p.Status.Phase
	}
	return w
}

func (w *podWorker) kick() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *podWorker) update(p *corev1.Pod) {
	w.mu.Lock()
	w.next = p
	w.mu.Unlock()
	w.kick()
}

func (w *podWorker) removed() {
	w.mu.Lock()
	w.gone = true
	w.mu.Unlock()
	w.kick()
}

func (w *podWorker) shutdown() {
	w.mu.Lock()
	w.stopping = true
	w.mu.Unlock()
	w.kick()
}

func (w *podWorker) key() string { return w.ns + "/" + w.name }

func (w *podWorker) run(ctx context.Context) {
	defer close(w.quit)
	for _, d := range []string{"logs", "volumes", "specs", "run"} {
		if err := os.MkdirAll(filepath.Join(w.dir, d), 0o755); err != nil {
			klog.Errorf("pod %s: %v", w.key(), err)
		}
	}
	klog.Infof("pod %s: worker started", w.key())
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.terminate(2 * time.Second)
			w.cleanup()
			return
		case <-w.notify:
		case ev := <-w.exits:
			w.handleExit(ev)
		case r := <-w.probeRes:
			w.handleProbe(r)
		case <-t.C:
		}
		w.mu.Lock()
		if w.next != nil {
			w.pod, w.next = w.next, nil
		}
		gone, stopping := w.gone, w.stopping
		w.mu.Unlock()
		if gone || stopping {
			klog.Infof("pod %s: removed from the API (or agent stopping): stopping containers", w.key())
			w.terminate(2 * time.Second)
			w.cleanup()
			return
		}
		if w.pod.DeletionTimestamp != nil {
			grace := int64(30)
			if w.pod.DeletionGracePeriodSeconds != nil {
				grace = *w.pod.DeletionGracePeriodSeconds
			}
			klog.Infof("pod %s: deleting with grace period %ds", w.key(), grace)
			w.terminate(time.Duration(grace) * time.Second)
			w.finishDelete(ctx)
			w.cleanup()
			return
		}
		w.sync(ctx)
	}
}

// finishDelete removes the pod from the API once its containers are gone, as the kubelet does.
func (w *podWorker) finishDelete(ctx context.Context) {
	uid := w.pod.UID
	for {
		err := w.a.client.CoreV1().Pods(w.pod.Namespace).Delete(ctx, w.pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid}})
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			klog.Infof("pod %s: deleted", w.key())
			return
		}
		klog.Warningf("pod %s: final delete: %v (retrying)", w.key(), err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		w.mu.Lock()
		gone := w.gone
		w.mu.Unlock()
		if gone {
			return
		}
	}
}

func (w *podWorker) cleanup() {
	if w.sb != nil {
		w.a.net.deleteSandbox(w.sb)
		w.sb = nil
	}
	_ = os.RemoveAll(filepath.Join(w.dir, "volumes"))
	_ = os.RemoveAll(filepath.Join(w.dir, "specs"))
	_ = os.RemoveAll(filepath.Join(w.dir, "run"))
	_ = os.Remove(filepath.Join(w.dir, "sandbox.json"))
	klog.Infof("pod %s: cleaned up (logs kept in %s)", w.key(), filepath.Join(w.dir, "logs"))
}

func (w *podWorker) gracePeriod() time.Duration {
	if g := w.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// terminate stops app containers (preStop, SIGTERM, grace, SIGKILL), then
// sidecars in reverse order, all within grace.
func (w *podWorker) terminate(grace time.Duration) {
	deadline := time.Now().Add(grace)
	var apps, sidecars []*ctr
	for _, c := range w.ctrs {
		if !c.running() {
			continue
		}
		if c.sidecar {
			sidecars = append([]*ctr{c}, sidecars...)
		} else {
			apps = append(apps, c)
		}
	}
	s := w.snap()
	stopGroup := func(cs []*ctr) {
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Add(1)
			go func(c *ctr, p *process, env []string, killing bool) {
				defer wg.Done()
				if !killing {
					w.runPreStop(s, c, env, p.gen, deadline)
				}
				p.stop(deadline)
			}(c, c.proc, c.env, c.killing)
		}
		wg.Wait()
	}
	for _, c := range append(append([]*ctr{}, apps...), sidecars...) {
		w.a.events.Eventf(w.pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
	}
	stopGroup(apps)
	for _, c := range sidecars {
		stopGroup([]*ctr{c})
	}
	for _, c := range append(apps, sidecars...) {
		w.recordExit(c, c.proc)
	}
}

// recordExit turns a finished process into the container's terminated state.
func (w *podWorker) recordExit(c *ctr, p *process) {
	<-p.done
	reason := "Completed"
	if p.exitCode != 0 {
		reason = "Error"
	}
	c.term = &corev1.ContainerStateTerminated{ExitCode: p.exitCode, Reason: reason, Signal: 0,
		StartedAt: metav1.NewTime(p.started), FinishedAt: metav1.NewTime(p.finished), ContainerID: w.containerID(c, p.gen)}
	if p.signal != "" {
		c.term.Message = "killed by " + p.signal
	}
	c.proc = nil
	w.execMu.Lock()
	delete(w.execTargets, c.spec.Name)
	w.execMu.Unlock()
	_ = os.Remove(filepath.Join(w.dir, "run", c.spec.Name+".pid"))
	c.started, c.ready, c.killing = false, false, false
	c.probes = map[string]*probeState{}
}

func (w *podWorker) containerID(c *ctr, gen int) string {
	return fmt.Sprintf("handover://%s-%s-%d", w.uid, c.spec.Name, gen)
}

func (w *podWorker) restartPolicy() corev1.RestartPolicy {
	if w.pod.Spec.RestartPolicy == "" {
		return corev1.RestartPolicyAlways
	}
	return w.pod.Spec.RestartPolicy
}

func (w *podWorker) handleExit(ev exitEvent) {
	var c *ctr
	for _, x := range w.ctrs {
		if x.spec.Name == ev.name {
			c = x
		}
	}
	if c == nil || c.proc == nil || c.proc.gen != ev.gen {
		return
	}
	ranFor := time.Since(c.proc.started)
	w.recordExit(c, c.proc)
	klog.Infof("pod %s: container %s exited with %d after %s", w.key(), c.spec.Name, c.term.ExitCode, ranFor.Round(time.Millisecond))
	restart := false
	switch {
	case c.sidecar:
		restart = true
	case c.init:
		restart = c.term.ExitCode != 0 && w.restartPolicy() != corev1.RestartPolicyNever
	default:
		switch w.restartPolicy() {
		case corev1.RestartPolicyAlways:
			restart = true
		case corev1.RestartPolicyOnFailure:
			restart = c.term.ExitCode != 0
		}
	}
	if !restart {
		return
	}
	if c.backoff == 0 || ranFor > 2*w.a.cfg.backoffMax {
		c.backoff = w.a.cfg.backoffInitial
	} else {
		c.backoff *= 2
		if c.backoff > w.a.cfg.backoffMax {
			c.backoff = w.a.cfg.backoffMax
		}
	}
	c.restartDue = true
	c.nextStart = time.Now().Add(c.backoff)
	w.a.events.Eventf(w.pod, corev1.EventTypeWarning, "BackOff", "Back-off %s restarting failed container %s (exit code %d)", c.backoff, c.spec.Name, c.term.ExitCode)
	c.waitReason = "CrashLoopBackOff"
	c.waitMessage = fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", c.backoff, c.spec.Name, w.key())
}

// sync moves the pod one step towards its spec and reports status.
func (w *podWorker) sync(ctx context.Context) {
	now := time.Now()
	if w.terminal != "" {
		w.reportStatus(ctx)
		return
	}
	if w.startTime == nil {
		t := metav1.NewTime(now)
		if w.pod.Status.StartTime != nil {
			t = *w.pod.Status.StartTime
		}
		w.startTime = &t
	}
	if now.Before(w.retryAt) {
		w.reportStatus(ctx)
		return
	}
	if w.sb == nil {
		var sb *sandbox
		var err error
		if w.pod.Spec.HostNetwork {
			sb = w.a.net.hostSandbox()
		} else {
			sb, err = w.a.net.createSandbox(string(w.uid))
		}
		if err != nil {
			w.setupErr = "pod sandbox: " + err.Error()
			w.retryAt = now.Add(2 * time.Second)
			klog.Warningf("pod %s: %s", w.key(), w.setupErr)
			w.reportStatus(ctx)
			return
		}
		w.sb = sb
		w.podIP = sb.ip.String()
		if err := writeJSON(filepath.Join(w.dir, "sandbox.json"), map[string]string{
			"netns": sb.ns, "veth": sb.veth, "ip": w.podIP}); err != nil {
			klog.Warningf("pod %s: %v", w.key(), err)
		}
		if err := w.writeNetworkFiles(); err != nil {
			klog.Warningf("pod %s: %v", w.key(), err)
		}
		klog.Infof("pod %s: sandbox %q with IP %s (hostNetwork %v)", w.key(), sb.ns, sb.ip, w.pod.Spec.HostNetwork)
	}
	if !w.volsOK || now.Sub(w.lastVols) >= w.a.cfg.volumeResync {
		w.lastVols = now
		if err := w.vm.sync(ctx, w.pod); err != nil {
			if !w.volsOK {
				w.setupErr = "mounting volumes: " + err.Error()
				w.retryAt = now.Add(2 * time.Second)
				klog.Warningf("pod %s: %s", w.key(), w.setupErr)
				w.reportStatus(ctx)
				return
			}
			klog.Warningf("pod %s: refreshing volumes: %v", w.key(), err)
		} else {
			w.volsOK = true
			w.setupErr = ""
		}
	}

	initDone := true
	for _, c := range w.ctrs {
		if !c.init {
			continue
		}
		if c.sidecar {
			if !c.running() && (c.gen == 0 || (c.restartDue && !now.Before(c.nextStart))) {
				w.start(ctx, c)
			}
			if !(c.running() && c.started) {
				initDone = false
				break
			}
			continue
		}
		if c.term != nil && c.term.ExitCode == 0 {
			continue
		}
		initDone = false
		if c.running() {
			break
		}
		if c.term != nil && !c.restartDue {
			w.terminal = corev1.PodFailed
			break
		}
		if c.gen == 0 || !now.Before(c.nextStart) {
			w.start(ctx, c)
		}
		break
	}
	// Once initialized, a restarting sidecar does not hold app containers back.
	if initDone || w.initDone {
		w.initDone = true
		for _, c := range w.ctrs {
			if c.init || c.running() {
				continue
			}
			if c.gen == 0 || (c.restartDue && !now.Before(c.nextStart)) {
				w.start(ctx, c)
			}
		}
		w.checkCompleted()
	}
	w.scheduleProbes()
	w.reportStatus(ctx)
	if w.terminal != "" {
		klog.Infof("pod %s: finished with phase %s; stopping sidecars", w.key(), w.terminal)
		w.terminate(w.gracePeriod())
		w.cleanupSandboxOnly()
		w.reportStatus(ctx)
	}
}

func (w *podWorker) cleanupSandboxOnly() {
	if w.sb != nil {
		w.a.net.deleteSandbox(w.sb)
		w.sb = nil
	}
}

// checkCompleted sets the terminal phase when no app container will run again.
func (w *podWorker) checkCompleted() {
	if w.restartPolicy() == corev1.RestartPolicyAlways {
		return
	}
	failed := false
	for _, c := range w.ctrs {
		if c.init {
			continue
		}
		if c.running() || c.restartDue || c.term == nil {
			return
		}
		if c.term.ExitCode != 0 {
			failed = true
		}
	}
	if failed {
		w.terminal = corev1.PodFailed
	} else {
		w.terminal = corev1.PodSucceeded
	}
}

// start launches a new instance of c; failures leave it waiting with a back-off.
func (w *podWorker) start(ctx context.Context, c *ctr) {
	fail := func(reason string, err error) {
		c.waitReason, c.waitMessage = reason, err.Error()
		if c.backoff == 0 {
			c.backoff = w.a.cfg.backoffInitial
		} else if c.backoff < w.a.cfg.backoffMax {
			c.backoff *= 2
		}
		c.restartDue = true
		c.nextStart = time.Now().Add(c.backoff)
		if c.gen == 0 {
			c.gen = -1 // not started, but not "never tried" either
		}
		klog.Warningf("pod %s: container %s: %s: %v", w.key(), c.spec.Name, reason, err)
		w.a.events.Eventf(w.pod, corev1.EventTypeWarning, "Failed", "Error: %s: %v", reason, err)
	}
	img, err := w.a.images.lookup(c.spec.Image)
	if err != nil {
		fail("ErrImageNeverPull", err)
		return
	}
	env, envMap, err := w.a.containerEnv(ctx, w.envPod(), &c.spec, img)
	if err != nil {
		fail("CreateContainerConfigError", err)
		return
	}
	var argv []string
	switch {
	case len(c.spec.Command) > 0:
		argv = append(append(argv, c.spec.Command...), c.spec.Args...)
	case len(c.spec.Args) > 0:
		argv = append(append(argv, img.Entrypoint...), c.spec.Args...)
	default:
		argv = append(append(argv, img.Entrypoint...), img.Args...)
	}
	for i := range argv {
		argv[i] = expand(argv[i], envMap)
	}
	mounts, err := w.mounts(w.pod, &c.spec)
	if err != nil {
		fail("CreateContainerConfigError", err)
		return
	}
	gen := c.gen + 1
	if gen < 1 {
		gen = 1
	}
	spec := initSpec{Mounts: mounts, Argv: argv, Env: env, Dir: c.spec.WorkingDir, Hostname: hostname(w.pod)}
	specPath := filepath.Join(w.dir, "specs", fmt.Sprintf("%s-%d.json", c.spec.Name, gen))
	if err := writeJSON(specPath, spec); err != nil {
		fail("CreateContainerError", err)
		return
	}
	p, err := startProcess(w.sb.command(w.a.self, "container-init", specPath), filepath.Join(w.dir, "logs", c.spec.Name+".log"), gen)
	if err != nil {
		fail("RunContainerError", err)
		return
	}
	if c.term != nil {
		c.lastTerm = c.term
		c.term = nil
	}
	if c.gen > 0 {
		c.restartCount++
	}
	c.gen = gen
	c.proc = p
	c.env = env
	w.execMu.Lock()
	w.execTargets[c.spec.Name] = execTarget{snap: w.snap(), ctr: c, env: env, gen: gen}
	w.execIP = w.podIP
	w.execMu.Unlock()
	// For fault-injection tests: the container's main process.
	_ = os.WriteFile(filepath.Join(w.dir, "run", c.spec.Name+".pid"), []byte(fmt.Sprintf("%d\n", p.pid)), 0o644)
	c.restartDue = false
	c.waitReason, c.waitMessage = "", ""
	c.probes = map[string]*probeState{}
	c.started = c.spec.StartupProbe == nil
	c.ready = false
	klog.Infof("pod %s: started container %s (pid %d): %v", w.key(), c.spec.Name, p.pid, argv)
	w.a.events.Eventf(w.pod, corev1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	name := c.spec.Name
	go func() {
		<-p.done
		select {
		case w.exits <- exitEvent{name: name, gen: gen}:
		case <-w.quit:
		}
	}()
}

// envPod is the pod as its containers' downward API sees it: with its IPs.
func (w *podWorker) envPod() *corev1.Pod {
	p := w.pod.DeepCopy()
	p.Status.PodIP = w.podIP
	p.Status.HostIP = w.a.bridgeIP.String()
	return p
}

// snap captures what goroutines working for this pod (probes, hooks) may read.
func (w *podWorker) snap() podSnap {
	return podSnap{pod: w.envPod(), podIP: w.podIP, sb: w.sb}
}

// writeNetworkFiles writes the pod's /etc/hosts (localhost, its hostname at
// its IP, the API server as kubernetes.default.svc) and /etc/resolv.conf. There
// is no cluster DNS: other names fail at once instead of waiting for a
// resolver that pods cannot reach.
func (w *podWorker) writeNetworkFiles() error {
	if w.pod.Spec.HostNetwork {
		return nil
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n"+
		"%s\tkubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local\n",
		w.podIP, hostname(w.pod), w.a.cfg.apiHost)
	if err := os.WriteFile(filepath.Join(w.dir, "hosts"), []byte(hosts), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(w.dir, "resolv.conf"), []byte("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"), 0o644)
}

// mounts resolves a container's volumeMounts to host paths, plus the pod's
// /etc/hosts and /etc/resolv.conf.
func (w *podWorker) mounts(pod *corev1.Pod, c *corev1.Container) ([]mountSpec, error) {
	var out []mountSpec
	if !pod.Spec.HostNetwork {
		out = append(out,
			mountSpec{Source: filepath.Join(w.dir, "hosts"), Target: "/etc/hosts", ReadOnly: true},
			mountSpec{Source: filepath.Join(w.dir, "resolv.conf"), Target: "/etc/resolv.conf", ReadOnly: true})
	}
	for _, m := range c.VolumeMounts {
		found := false
		for _, v := range pod.Spec.Volumes {
			if v.Name == m.Name {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("volumeMount %q: no such volume", m.Name)
		}
		src := w.vm.path(pod, m.Name)
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
			if r, err := filepath.EvalSymlinks(src); err == nil {
				src = r
			}
		}
		out = append(out, mountSpec{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return out, nil
}

// hostname is the pod's hostname: spec.hostname or its name, at most 63 characters.
func hostname(p *corev1.Pod) string {
	if p.Spec.HostNetwork {
		return "" // the host's
	}
	h := p.Name
	if p.Spec.Hostname != "" {
		h = p.Spec.Hostname
	}
	if len(h) > 63 {
		h = h[:63]
	}
	return h
}
