package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fieldValue resolves a downward API fieldPath.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "metadata.labels", "metadata.annotations":
		m := pod.Labels
		if path == "metadata.annotations" {
			m = pod.Annotations
		}
		var b strings.Builder
		for k, v := range m {
			fmt.Fprintf(&b, "%s=%s\n", k, strconv.Quote(v))
		}
		return b.String(), nil
	}
	for _, pre := range []string{"metadata.labels['", "metadata.annotations['"} {
		if strings.HasPrefix(path, pre) && strings.HasSuffix(path, "']") {
			k := strings.TrimSuffix(strings.TrimPrefix(path, pre), "']")
			if strings.HasPrefix(pre, "metadata.labels") {
				return pod.Labels[k], nil
			}
			return pod.Annotations[k], nil
		}
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

// expand replaces $(VAR) with values from env; $$ escapes, unknown references stay.
func expand(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) {
			if s[i+1] == '$' {
				b.WriteByte('$')
				i++
				continue
			}
			if s[i+1] == '(' {
				if j := strings.IndexByte(s[i+2:], ')'); j >= 0 {
					name := s[i+2 : i+2+j]
					if v, ok := env[name]; ok {
						b.WriteString(v)
						i += j + 2
						continue
					}
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// containerEnv builds a container's environment in Kubernetes order: defaults,
// image env, envFrom, env (with $(VAR) expansion).
func (a *agent) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, img imageEntry) ([]string, map[string]string, error) {
	order := []string{}
	env := map[string]string{}
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	if img.Dir != "" {
		path = img.Dir + ":" + path
	}
	set("PATH", path)
	set("HOME", "/root")
	set("HOSTNAME", pod.Name)
	host, port := a.cfg.apiHost, strconv.Itoa(a.cfg.apiPort)
	set("KUBERNETES_SERVICE_HOST", host)
	set("KUBERNETES_SERVICE_PORT", port)
	set("KUBERNETES_SERVICE_PORT_HTTPS", port)
	set("KUBERNETES_PORT", "tcp://"+host+":"+port)
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		svcs, err := a.client.CoreV1().Services(pod.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("service links: %w", err)
		}
		for _, svc := range svcs.Items {
			ip := svc.Spec.ClusterIP
			if ip == "" || ip == corev1.ClusterIPNone || len(svc.Spec.Ports) == 0 || svc.Name == "kubernetes" {
				continue
			}
			name := strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_"))
			set(name+"_SERVICE_HOST", ip)
			set(name+"_SERVICE_PORT", strconv.Itoa(int(svc.Spec.Ports[0].Port)))
			first := svc.Spec.Ports[0]
			set(name+"_PORT", fmt.Sprintf("%s://%s:%d", strings.ToLower(string(first.Protocol)), ip, first.Port))
			for _, p := range svc.Spec.Ports {
				if p.Name != "" {
					set(name+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port)))
				}
				proto := string(p.Protocol)
				if proto == "" {
					proto = "TCP"
				}
				pre := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, proto)
				set(pre, fmt.Sprintf("%s://%s:%d", strings.ToLower(proto), ip, p.Port))
				set(pre+"_PROTO", strings.ToLower(proto))
				set(pre+"_PORT", strconv.Itoa(int(p.Port)))
				set(pre+"_ADDR", ip)
			}
		}
	}
	for _, k := range sortedKeys(img.Env) {
		set(k, img.Env[k])
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := a.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("envFrom configmap %q: %w", ef.ConfigMapRef.Name, err)
			}
			for _, k := range sortedKeys(cm.Data) {
				set(ef.Prefix+k, cm.Data[k])
			}
		case ef.SecretRef != nil:
			s, err := a.client.CoreV1().Secrets(pod.Namespace).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("envFrom secret %q: %w", ef.SecretRef.Name, err)
			}
			for _, k := range sortedKeys(s.Data) {
				set(ef.Prefix+k, string(s.Data[k]))
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, env))
			continue
		}
		vf := e.ValueFrom
		switch {
		case vf.FieldRef != nil:
			v, err := fieldValue(pod, vf.FieldRef.FieldPath)
			if err != nil {
				return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			set(e.Name, v)
		case vf.SecretKeyRef != nil:
			s, err := a.client.CoreV1().Secrets(pod.Namespace).Get(ctx, vf.SecretKeyRef.Name, metav1.GetOptions{})
			optional := vf.SecretKeyRef.Optional != nil && *vf.SecretKeyRef.Optional
			if err != nil {
				if optional {
					continue
				}
				return nil, nil, fmt.Errorf("env %s: secret %q: %w", e.Name, vf.SecretKeyRef.Name, err)
			}
			v, ok := s.Data[vf.SecretKeyRef.Key]
			if !ok && !optional {
				return nil, nil, fmt.Errorf("env %s: key %q not in secret %q", e.Name, vf.SecretKeyRef.Key, vf.SecretKeyRef.Name)
			}
			if ok {
				set(e.Name, string(v))
			}
		case vf.ConfigMapKeyRef != nil:
			cm, err := a.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, vf.ConfigMapKeyRef.Name, metav1.GetOptions{})
			optional := vf.ConfigMapKeyRef.Optional != nil && *vf.ConfigMapKeyRef.Optional
			if err != nil {
				if optional {
					continue
				}
				return nil, nil, fmt.Errorf("env %s: configmap %q: %w", e.Name, vf.ConfigMapKeyRef.Name, err)
			}
			v, ok := cm.Data[vf.ConfigMapKeyRef.Key]
			if !ok && !optional {
				return nil, nil, fmt.Errorf("env %s: key %q not in configmap %q", e.Name, vf.ConfigMapKeyRef.Key, vf.ConfigMapKeyRef.Name)
			}
			if ok {
				set(e.Name, v)
			}
		case vf.ResourceFieldRef != nil:
			set(e.Name, "0")
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out, env, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
