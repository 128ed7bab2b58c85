package main

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

func (w *podWorker) containerStatus(c *ctr) corev1.ContainerStatus {
	st := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      "handover-local://" + imageName(c.spec.Image),
		RestartCount: c.restartCount,
		Ready:        c.running() && c.ready,
		Started:      ptr.To(c.running() && c.started),
	}
	if c.lastTerm != nil {
		st.LastTerminationState.Terminated = c.lastTerm
	}
	switch {
	case c.running():
		st.ContainerID = w.containerID(c, c.gen)
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.proc.started)}
	case c.term != nil && !c.restartDue:
		st.ContainerID = c.term.ContainerID
		st.State.Terminated = c.term
	case c.term != nil:
		// Waiting to restart: the last exit is the "last state".
		st.ContainerID = c.term.ContainerID
		st.LastTerminationState.Terminated = c.term
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
	default:
		reason, msg := "ContainerCreating", c.waitMessage
		if c.waitReason != "" {
			reason = c.waitReason
		} else if w.setupErr != "" {
			msg = w.setupErr
		} else if !c.init && !w.initDone {
			reason = "PodInitializing"
		}
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
	}
	return st
}

func (w *podWorker) condition(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
	s := corev1.ConditionFalse
	if ok {
		s = corev1.ConditionTrue
		reason = ""
	}
	old, seen := w.condTimes[t]
	if seen && old.Status == s && old.Reason == reason {
		return old
	}
	c := corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: metav1.NewTime(time.Now())}
	w.condTimes[t] = c
	return c
}

// buildStatus is the pod's status as a kubelet would report it.
func (w *podWorker) buildStatus() corev1.PodStatus {
	old := w.pod.Status
	st := corev1.PodStatus{
		QOSClass:  old.QOSClass,
		StartTime: w.startTime,
		HostIP:    w.a.bridgeIP.String(),
		HostIPs:   []corev1.HostIP{{IP: w.a.bridgeIP.String()}},
	}
	if w.podIP != "" {
		st.PodIP = w.podIP
		st.PodIPs = []corev1.PodIP{{IP: w.podIP}}
	}
	anyStarted, appsReady := false, true
	for _, c := range w.ctrs {
		cs := w.containerStatus(c)
		if c.init {
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
			if c.sidecar && !cs.Ready {
				appsReady = false
			}
			continue
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		if c.gen > 0 {
			anyStarted = true
		}
		if !cs.Ready {
			appsReady = false
		}
	}
	switch {
	case w.terminal != "":
		st.Phase = w.terminal
	case w.initDone && anyStarted:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	gatesOK := true
	for _, g := range w.pod.Spec.ReadinessGates {
		found := false
		for _, c := range old.Conditions {
			if c.Type == g.ConditionType && c.Status == corev1.ConditionTrue {
				found = true
			}
		}
		gatesOK = gatesOK && found
	}
	terminal := w.terminal != ""
	ready := appsReady && !terminal && st.Phase == corev1.PodRunning
	scheduled := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}
	for _, c := range old.Conditions {
		if c.Type == corev1.PodScheduled {
			scheduled = c
		}
	}
	notReadyReason := "ContainersNotReady"
	if terminal {
		notReadyReason = "PodCompleted"
	}
	st.Conditions = []corev1.PodCondition{
		w.condition(corev1.PodReadyToStartContainers, w.sb != nil, ""),
		w.condition(corev1.PodInitialized, w.initDone, "ContainersNotInitialized"),
		w.condition(corev1.ContainersReady, ready, notReadyReason),
		w.condition(corev1.PodReady, ready && gatesOK, notReadyReason),
		scheduled,
	}
	// Conditions owned by others (readiness gates) are kept.
	for _, c := range old.Conditions {
		switch c.Type {
		case corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady, corev1.PodScheduled:
		default:
			st.Conditions = append(st.Conditions, c)
		}
	}
	return st
}

// reportStatus writes the status when it changed; failures are retried on later ticks.
func (w *podWorker) reportStatus(ctx context.Context) {
	st := w.buildStatus()
	if w.lastSent != nil && apiequality.Semantic.DeepEqual(*w.lastSent, st) {
		return
	}
	if time.Now().Before(w.statusWait) {
		return
	}
	pods := w.a.client.CoreV1().Pods(w.pod.Namespace)
	p := w.pod.DeepCopy()
	p.Status = st
	res, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		var fresh *corev1.Pod
		fresh, err = pods.Get(ctx, w.pod.Name, metav1.GetOptions{})
		if err == nil && fresh.UID == w.pod.UID {
			w.pod = fresh
			st = w.buildStatus()
			fresh = fresh.DeepCopy()
			fresh.Status = st
			res, err = pods.UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		klog.Warningf("pod %s: status update: %v (will retry)", w.key(), err)
		w.statusWait = time.Now().Add(time.Second)
		return
	}
	if res.UID == w.pod.UID {
		w.pod = res
	}
	w.lastSent = &st
}
