package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
	remotecommandserver "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// execTarget is what `kubectl exec` needs of a running container; the pod
// worker publishes it when the container starts and withdraws it when it exits.
type execTarget struct {
	snap podSnap
	ctr  *ctr
	env  []string
	gen  int
}

const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommandconsts.DefaultStreamCreationTimeout
)

var execSeq atomic.Int64

// findWorker returns the worker of pod namespace/name.
func (a *agent) findWorker(namespace, name string) *podWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.workers {
		if w.ns == namespace && w.name == name {
			return w
		}
	}
	return nil
}

// pathParts splits the request path after prefix into n parts, or answers 400 naming the wanted form.
func pathParts(w http.ResponseWriter, req *http.Request, prefix, form string, n int) ([]string, bool) {
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, prefix), "/")
	if len(parts) != n {
		http.Error(w, "want "+form, http.StatusBadRequest)
		return nil, false
	}
	return parts, true
}

// workerOr404 returns the worker of pod namespace/name, or answers 404.
func (a *agent) workerOr404(w http.ResponseWriter, namespace, name string) *podWorker {
	pw := a.findWorker(namespace, name)
	if pw == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s is not on this node", namespace, name), http.StatusNotFound)
	}
	return pw
}

// serveExec answers the API server's /exec/{namespace}/{pod}/{container}?command=...
func (a *agent) serveExec(w http.ResponseWriter, req *http.Request) {
	parts, ok := pathParts(w, req, "/exec/", "/exec/{namespace}/{pod}/{container}", 3)
	if !ok {
		return
	}
	opts, err := remotecommandserver.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pw := a.workerOr404(w, parts[0], parts[1])
	if pw == nil {
		return
	}
	remotecommandserver.ServeExec(w, req, pw, parts[1], pw.uid, parts[2], req.URL.Query()[corev1.ExecCommandParam],
		opts, streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

// ExecInContainer runs cmd in the container's namespaces and mounts (remotecommand Executor).
// A TTY is not allocated: interactive shells work line by line.
func (w *podWorker) ExecInContainer(ctx context.Context, _ string, _ types.UID, container string, cmd []string,
	in io.Reader, out, errw io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	w.execMu.Lock()
	t, ok := w.execTargets[container]
	w.execMu.Unlock()
	if !ok {
		return fmt.Errorf("container %s of pod %s is not running", container, w.key())
	}
	if len(cmd) == 0 {
		return fmt.Errorf("no command")
	}
	mounts, err := w.mounts(t.snap.pod, &t.ctr.spec)
	if err != nil {
		return err
	}
	specPath := filepath.Join(w.dir, "specs", fmt.Sprintf("%s-%d-exec-%d.json", container, t.gen, execSeq.Add(1)))
	if err := writeJSON(specPath, initSpec{Mounts: mounts, Argv: cmd, Env: t.env, Dir: t.ctr.spec.WorkingDir, Hostname: hostname(t.snap.pod)}); err != nil {
		return err
	}
	defer os.Remove(specPath)
	run := t.snap.sb.command(w.a.self, "container-init", specPath)
	c := exec.CommandContext(ctx, run[0], run[1:]...)
	if in != nil {
		c.Stdin = in
	}
	if out != nil {
		c.Stdout = out
	}
	if errw != nil {
		c.Stderr = errw
	}
	err = c.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return utilexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	return err
}

// servePortForward answers /portForward/{namespace}/{pod} by dialling the pod's IP.
func (a *agent) servePortForward(w http.ResponseWriter, req *http.Request) {
	parts, ok := pathParts(w, req, "/portForward/", "/portForward/{namespace}/{pod}", 2)
	if !ok {
		return
	}
	opts, err := portforward.NewV4Options(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pw := a.workerOr404(w, parts[0], parts[1])
	if pw == nil {
		return
	}
	portforward.ServePortForward(w, req, pw, parts[1], pw.uid, opts, streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// PortForward copies between stream and the pod's port (portforward PortForwarder).
func (w *podWorker) PortForward(ctx context.Context, _ string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	w.execMu.Lock()
	ip := w.execIP
	w.execMu.Unlock()
	if ip == "" {
		return fmt.Errorf("pod %s has no IP", w.key())
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port-forward to %s port %d: %w", w.key(), port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
