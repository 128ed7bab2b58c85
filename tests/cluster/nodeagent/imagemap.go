package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// imageEntry says how to run an image locally.
type imageEntry struct {
	// Dir is put first on PATH.
	Dir string `json:"dir"`
	// Entrypoint is the image's ENTRYPOINT; a container's command replaces it.
	Entrypoint []string `json:"entrypoint"`
	// Args is the image's CMD; a container's command or args replace it.
	Args []string `json:"args,omitempty"`
	// Env is added before the container's own env.
	Env map[string]string `json:"env,omitempty"`
}

// imageMap is keyed by image name without registry, tag or digest.
type imageMap map[string]imageEntry

// imageMapFile re-reads its file when it changes, so a running agent picks up
// a new map (up.sh rewrites it) for the next container it starts.
type imageMapFile struct {
	path  string
	mu    sync.Mutex
	mtime time.Time
	m     imageMap
}

func (f *imageMapFile) lookup(image string) (imageEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err != nil {
		return imageEntry{}, fmt.Errorf("image map: %w", err)
	}
	if f.m == nil || !st.ModTime().Equal(f.mtime) {
		m, err := loadImageMap(f.path)
		if err != nil {
			return imageEntry{}, err
		}
		f.m, f.mtime = m, st.ModTime()
	}
	return f.m.lookup(image)
}

func loadImageMap(path string) (imageMap, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image map: %w", err)
	}
	m := imageMap{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("image map %s: %w", path, err)
	}
	return m, nil
}

// imageName strips registry, tag and digest: "ghcr.io/acme/handover:1.0" -> "acme/handover".
func imageName(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	if i := strings.Index(image, "/"); i >= 0 {
		first := image[:i]
		if strings.ContainsAny(first, ".:") || first == "localhost" {
			image = image[i+1:]
		}
	}
	return strings.TrimPrefix(image, "library/")
}

// lookup finds an image by its name without registry and tag, then by its last path element.
func (m imageMap) lookup(image string) (imageEntry, error) {
	name := imageName(image)
	if e, ok := m[name]; ok {
		return e, nil
	}
	if i := strings.LastIndex(name, "/"); i >= 0 {
		if e, ok := m[name[i+1:]]; ok {
			return e, nil
		}
	}
	return imageEntry{}, fmt.Errorf("image %q (name %q) is not in the image map", image, name)
}
