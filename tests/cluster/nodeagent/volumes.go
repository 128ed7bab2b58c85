package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumeFile is one file of a Secret/ConfigMap/projected/downwardAPI volume.
type volumeFile struct {
	data []byte
	mode os.FileMode
}

type cachedToken struct {
	token   string
	fetched time.Time
	expires time.Time
}

// volumeManager materialises a pod's volumes under dir and refreshes them.
type volumeManager struct {
	a      *agent
	dir    string
	hashes map[string][32]byte
	tokens map[string]cachedToken
}

func newVolumeManager(a *agent, dir string) *volumeManager {
	return &volumeManager{a: a, dir: dir, hashes: map[string][32]byte{}, tokens: map[string]cachedToken{}}
}

// path is where volume name lives on the host.
func (vm *volumeManager) path(pod *corev1.Pod, name string) string {
	for _, v := range pod.Spec.Volumes {
		if v.Name == name && v.HostPath != nil {
			return v.HostPath.Path
		}
	}
	return filepath.Join(vm.dir, name)
}

// sync writes or refreshes every volume. It fails when a non-optional source is missing.
func (vm *volumeManager) sync(ctx context.Context, pod *corev1.Pod) error {
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(vm.dir, v.Name)
		var files map[string]volumeFile
		var err error
		switch {
		case v.EmptyDir != nil:
			err = os.MkdirAll(dir, 0o777)
			continue
		case v.HostPath != nil:
			if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectoryOrCreate {
				err = os.MkdirAll(v.HostPath.Path, 0o755)
			}
			if err != nil {
				return err
			}
			continue
		case v.Secret != nil:
			files, err = vm.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.DefaultMode, v.Secret.Optional)
		case v.ConfigMap != nil:
			files, err = vm.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.DefaultMode, v.ConfigMap.Optional)
		case v.DownwardAPI != nil:
			files, err = downwardFiles(pod, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		case v.Projected != nil:
			files, err = vm.projectedFiles(ctx, pod, v.Name, v.Projected)
		default:
			return fmt.Errorf("volume %q: unsupported volume type (node agent supports emptyDir, hostPath, secret, configMap, downwardAPI, projected)", v.Name)
		}
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		if err := vm.writeAtomic(v.Name, dir, files); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	return nil
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m)
	}
	return def
}

func selectKeys(data map[string][]byte, items []corev1.KeyToPath, defMode *int32) (map[string]volumeFile, error) {
	out := map[string]volumeFile{}
	if len(items) == 0 {
		for k, b := range data {
			out[k] = volumeFile{b, mode(defMode, 0o644)}
		}
		return out, nil
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("key %q not found", it.Key)
		}
		m := mode(defMode, 0o644)
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		out[it.Path] = volumeFile{b, m}
	}
	return out, nil
}

func (vm *volumeManager) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, defMode *int32, optional *bool) (map[string]volumeFile, error) {
	s, err := vm.a.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return map[string]volumeFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return selectKeys(s.Data, items, defMode)
}

func (vm *volumeManager) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, defMode *int32, optional *bool) (map[string]volumeFile, error) {
	c, err := vm.a.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return map[string]volumeFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range c.Data {
		data[k] = []byte(v)
	}
	for k, v := range c.BinaryData {
		data[k] = v
	}
	return selectKeys(data, items, defMode)
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, defMode *int32) (map[string]volumeFile, error) {
	out := map[string]volumeFile{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downwardAPI item %q: only fieldRef is supported", it.Path)
		}
		val, err := fieldValue(pod, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		m := mode(defMode, 0o644)
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		out[it.Path] = volumeFile{[]byte(val), m}
	}
	return out, nil
}

func (vm *volumeManager) projectedFiles(ctx context.Context, pod *corev1.Pod, volName string, p *corev1.ProjectedVolumeSource) (map[string]volumeFile, error) {
	out := map[string]volumeFile{}
	add := func(files map[string]volumeFile, err error) error {
		if err != nil {
			return err
		}
		for k, v := range files {
			out[k] = v
		}
		return nil
	}
	for i, s := range p.Sources {
		var err error
		switch {
		case s.Secret != nil:
			err = add(vm.secretFiles(ctx, pod.Namespace, s.Secret.Name, s.Secret.Items, p.DefaultMode, s.Secret.Optional))
		case s.ConfigMap != nil:
			err = add(vm.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, p.DefaultMode, s.ConfigMap.Optional))
		case s.DownwardAPI != nil:
			err = add(downwardFiles(pod, s.DownwardAPI.Items, p.DefaultMode))
		case s.ServiceAccountToken != nil:
			var tok string
			tok, err = vm.token(ctx, pod, fmt.Sprintf("%s/%d", volName, i), s.ServiceAccountToken)
			out[s.ServiceAccountToken.Path] = volumeFile{[]byte(tok), mode(p.DefaultMode, 0o644)}
		default:
			err = fmt.Errorf("projected source %d: unsupported", i)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// token returns a bound service-account token, refreshed after 80% of its life.
func (vm *volumeManager) token(ctx context.Context, pod *corev1.Pod, key string, src *corev1.ServiceAccountTokenProjection) (string, error) {
	now := time.Now()
	if t, ok := vm.tokens[key]; ok && now.Before(t.fetched.Add(t.expires.Sub(t.fetched)*8/10)) {
		return t.token, nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	res, err := vm.a.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	vm.tokens[key] = cachedToken{token: res.Status.Token, fetched: now, expires: res.Status.ExpirationTimestamp.Time}
	return res.Status.Token, nil
}

// writeAtomic lays files out the way the kubelet does: a timestamped directory,
// a "..data" symlink to it swapped by rename, and per-file symlinks through "..data",
// so readers never see a half-written update.
func (vm *volumeManager) writeAtomic(name, dir string, files map[string]volumeFile) error {
	h := sha256.New()
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", k, files[k].mode, len(files[k].data))
		h.Write(files[k].data)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if old, ok := vm.hashes[name]; ok && old == sum {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return err
	}
	for _, k := range keys {
		p := filepath.Join(ts, k)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, files[k].data, files[k].mode); err != nil {
			return err
		}
		if err := os.Chmod(p, files[k].mode); err != nil {
			return err
		}
	}
	oldTarget, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	top := map[string]bool{}
	for _, k := range keys {
		first := strings.SplitN(k, "/", 2)[0]
		top[first] = true
		link := filepath.Join(dir, first)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", first), link); err != nil {
			return err
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") {
			if n != "..data" && n != filepath.Base(ts) && (oldTarget == "" || n == oldTarget || strings.HasPrefix(n, "..20")) {
				_ = os.RemoveAll(filepath.Join(dir, n))
			}
			continue
		}
		if !top[n] {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	vm.hashes[name] = sum
	return nil
}
