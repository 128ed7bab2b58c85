package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// serveLogs answers the API server's /containerLogs, /exec and /portForward
// requests, so that `kubectl logs`, `kubectl exec` and `kubectl port-forward` work. It listens on the node's InternalIP with a
// self-signed certificate (the API server does not verify kubelets unless
// told to) and serves the container's log file, which holds the output of
// all its restarts.
func (a *agent) serveLogs(ctx context.Context, addr string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		klog.Errorf("logs server: %v", err)
		return
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: a.cfg.nodeName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{a.bridgeIP}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		klog.Errorf("logs server: %v", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/containerLogs/", a.containerLogs)
	mux.HandleFunc("/exec/", a.serveExec)
	mux.HandleFunc("/portForward/", a.servePortForward)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	klog.Infof("serving container logs on https://%s", addr)
	if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
		klog.Errorf("logs server: %v", err)
	}
}

// containerLogs serves /containerLogs/{namespace}/{pod}/{container}?tailLines=&follow=.
func (a *agent) containerLogs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 {
		http.Error(w, "want /containerLogs/{namespace}/{pod}/{container}", http.StatusBadRequest)
		return
	}
	matches, _ := filepath.Glob(filepath.Join(a.cfg.stateDir, "pods", parts[0]+"_"+parts[1]+"_*", "logs", parts[2]+".log"))
	var path string
	var newest time.Time
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && st.ModTime().After(newest) {
			path, newest = m, st.ModTime()
		}
	}
	if path == "" {
		http.Error(w, "no logs for container "+parts[2]+" of pod "+parts[0]+"/"+parts[1], http.StatusNotFound)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	q := r.URL.Query()
	w.Header().Set("Content-Type", "text/plain")
	if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n >= 0 {
		var lines []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if len(lines) > n {
				lines = lines[1:]
			}
		}
		for _, l := range lines {
			_, _ = io.WriteString(w, l+"\n")
		}
	} else if _, err := io.Copy(w, f); err != nil {
		return
	}
	if q.Get("follow") != "true" {
		return
	}
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32*1024)
	for {
		if fl != nil {
			fl.Flush()
		}
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			continue
		}
		if err != nil && err != io.EOF {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
