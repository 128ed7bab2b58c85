package main

import (
	"context"
	"os"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

const (
	heartbeatEvery = 10 * time.Second
	leaseSeconds   = 40
)

// runNode registers the Node and keeps its Ready condition and Lease fresh,
// retrying through API server outages.
func (a *agent) runNode(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		if err := a.heartbeat(ctx); err != nil {
			klog.Warningf("node heartbeat: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *agent) nodeStatus(now metav1.Time) corev1.NodeStatus {
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse(a.cfg.capacityCPU),
		corev1.ResourceMemory:           resource.MustParse(a.cfg.capacityMemory),
		corev1.ResourcePods:             *resource.NewQuantity(a.cfg.capacityPods, resource.DecimalSI),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg,
			LastHeartbeatTime: now, LastTransitionTime: now}
	}
	host, _ := os.Hostname()
	return corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "node agent"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "node agent"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "node agent"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "handover node agent is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: a.bridgeIP.String()},
			{Type: corev1.NodeHostName, Address: host},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
		NodeInfo: corev1.NodeSystemInfo{
			OperatingSystem:         "linux",
			Architecture:            runtime.GOARCH,
			KubeletVersion:          "v1.34.4-handover",
			KubeProxyVersion:        "",
			ContainerRuntimeVersion: "handover-nodeagent://0.1",
			OSImage:                 "host processes",
		},
	}
}

func (a *agent) heartbeat(ctx context.Context) error {
	nodes := a.client.CoreV1().Nodes()
	now := metav1.Now()
	node, err := nodes.Get(ctx, a.cfg.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node = &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: a.cfg.nodeName, Labels: map[string]string{
				"kubernetes.io/hostname": a.cfg.nodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
			}},
			Spec: corev1.NodeSpec{PodCIDR: a.net.subnet.String(), PodCIDRs: []string{a.net.subnet.String()}},
		}
		node, err = nodes.Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		klog.Infof("registered node %s", a.cfg.nodeName)
	} else if err != nil {
		return err
	}
	st := a.nodeStatus(now)
	// Keep transition times of conditions whose status did not change.
	for i, c := range st.Conditions {
		for _, old := range node.Status.Conditions {
			if old.Type == c.Type && old.Status == c.Status {
				st.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	node.Status = st
	if _, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return err
	}
	return a.renewLease(ctx, node)
}

func (a *agent) renewLease(ctx context.Context, node *corev1.Node) error {
	leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, a.cfg.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: a.cfg.nodeName, OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(a.cfg.nodeName),
				LeaseDurationSeconds: ptr.To[int32](leaseSeconds), RenewTime: &now},
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	} else if err != nil {
		return err
	}
	l.Spec.HolderIdentity = ptr.To(a.cfg.nodeName)
	l.Spec.LeaseDurationSeconds = ptr.To[int32](leaseSeconds)
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}
