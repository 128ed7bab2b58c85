package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// mountSpec is one bind mount made inside a container's mount namespace.
type mountSpec struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// initSpec is what "nodeagent container-init" reads: it runs as the container's
// first process inside the pod's network namespace and a private mount
// namespace (both from "ip netns exec"), makes the bind mounts and execs argv.
type initSpec struct {
	Mounts []mountSpec `json:"mounts"`
	Argv   []string    `json:"argv"`
	Env    []string    `json:"env"`
	Dir    string      `json:"dir,omitempty"`
	// Hostname is set in a new UTS namespace (the pod's name, as in Kubernetes).
	Hostname string `json:"hostname,omitempty"`
}

func containerInit(args []string) {
	fail := func(format string, a ...interface{}) {
		fmt.Fprintf(os.Stderr, "container-init: "+format+"\n", a...)
		os.Exit(127)
	}
	if len(args) != 1 {
		fail("usage: nodeagent container-init SPEC.json")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fail("%v", err)
	}
	var s initSpec
	if err := json.Unmarshal(b, &s); err != nil {
		fail("%s: %v", args[0], err)
	}
	// Namespaces made by unshare(2) belong to the calling thread: stay on it until exec.
	runtime.LockOSThread()
	if s.Hostname != "" {
		if err := syscall.Unshare(syscall.CLONE_NEWUTS); err != nil {
			fail("new UTS namespace: %v", err)
		}
		if err := syscall.Sethostname([]byte(s.Hostname)); err != nil {
			fail("sethostname: %v", err)
		}
	}
	for _, m := range s.Mounts {
		st, err := os.Stat(m.Source)
		if err != nil {
			fail("mount source: %v", err)
		}
		if st.IsDir() {
			err = os.MkdirAll(m.Target, 0o755)
		} else {
			err = os.MkdirAll(filepath.Dir(m.Target), 0o755)
			if err == nil {
				var f *os.File
				f, err = os.OpenFile(m.Target, os.O_CREATE|os.O_RDONLY, 0o644)
				if err == nil {
					f.Close()
				}
			}
		}
		if err != nil {
			fail("mount target %s: %v", m.Target, err)
		}
		if err := syscall.Mount(m.Source, m.Target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			fail("bind mount %s on %s: %v", m.Source, m.Target, err)
		}
		if m.ReadOnly {
			if err := syscall.Mount("", m.Target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
				fail("read-only remount of %s: %v", m.Target, err)
			}
		}
	}
	if len(s.Argv) == 0 {
		fail("no command: the image map entry has no entrypoint and the container no command")
	}
	path := ""
	for _, e := range s.Env {
		if strings.HasPrefix(e, "PATH=") {
			path = strings.TrimPrefix(e, "PATH=")
		}
	}
	bin := s.Argv[0]
	if !strings.Contains(bin, "/") {
		_ = os.Setenv("PATH", path)
		bin, err = exec.LookPath(s.Argv[0])
		if err != nil {
			fail("%s not found on PATH %s", s.Argv[0], path)
		}
	}
	if s.Dir != "" {
		if err := os.Chdir(s.Dir); err != nil {
			fail("working directory: %v", err)
		}
	}
	err = syscall.Exec(bin, s.Argv, s.Env)
	fail("exec %s: %v", bin, err)
}

// process is one running instance of a container.
type process struct {
	gen      int
	pid      int
	started  time.Time
	done     chan struct{}
	exitCode int32
	signal   string
	finished time.Time
}

// startProcess runs argv (a sandbox command), output appended to logPath.
func startProcess(argv []string, logPath string, gen int) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &process{gen: gen, pid: cmd.Process.Pid, started: time.Now(), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.finished = time.Now()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.exitCode = 128 + int32(ws.Signal())
				p.signal = ws.Signal().String()
			} else {
				p.exitCode = int32(ee.ExitCode())
			}
		} else if err != nil {
			p.exitCode = 128
		}
		// Reap anything the container left in its process group.
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		close(p.done)
	}()
	return p, nil
}

func (p *process) signalGroup(sig syscall.Signal) {
	_ = syscall.Kill(-p.pid, sig)
}

// stop sends SIGTERM, waits until deadline, then SIGKILL; returns when it has exited.
func (p *process) stop(deadline time.Time) {
	select {
	case <-p.done:
		return
	default:
	}
	p.signalGroup(syscall.SIGTERM)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	p.signalGroup(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

func writeJSON(path string, v interface{}) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
