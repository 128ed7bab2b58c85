package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestImageName(t *testing.T) {
	for in, want := range map[string]string{
		"handover":                          "handover",
		"handover:1.2":                      "handover",
		"ghcr.io/acme/handover:1.2":         "acme/handover",
		"localhost:5000/handover@sha256:ab": "handover",
		"docker.io/library/busybox:1.36":    "busybox",
		"acme/handover-sidecar":             "acme/handover-sidecar",
	} {
		if got := imageName(in); got != want {
			t.Errorf("imageName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestImageLookup(t *testing.T) {
	m := imageMap{"handover": {Dir: "/x"}, "acme/special": {Dir: "/y"}}
	for in, want := range map[string]string{
		"ghcr.io/org/handover:v1": "/x",
		"acme/special:2":          "/y",
	} {
		e, err := m.lookup(in)
		if err != nil || e.Dir != want {
			t.Errorf("lookup(%q) = %v, %v; want dir %s", in, e, err, want)
		}
	}
	if _, err := m.lookup("nginx"); err == nil {
		t.Error("lookup of an unmapped image succeeded")
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "1", "B": "two"}
	for in, want := range map[string]string{
		"$(A)-$(B)":     "1-two",
		"$$(A)":         "$(A)",
		"$(MISSING) $A": "$(MISSING) $A",
		"plain":         "plain",
	} {
		if got := expand(in, env); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	vm := &volumeManager{hashes: map[string][32]byte{}}
	if err := vm.writeAtomic("v", dir, map[string]volumeFile{"a": {[]byte("1"), 0o644}, "sub/b": {[]byte("2"), 0o600}}); err != nil {
		t.Fatal(err)
	}
	if err := vm.writeAtomic("v", dir, map[string]volumeFile{"a": {[]byte("3"), 0o644}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "a"))
	if err != nil || string(b) != "3" {
		t.Fatalf("a = %q, %v; want 3", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Errorf("sub should be gone after the update, Lstat: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 { // a, ..data, one timestamped dir
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("volume dir holds %v, want a, ..data and one data dir", names)
	}
}
