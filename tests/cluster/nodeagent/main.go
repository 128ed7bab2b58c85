// Command nodeagent is the test cluster's stand-in for a kubelet: it registers
// one Node, runs the containers of the pods bound to it as host processes in
// per-pod network namespaces, and reports their status. See tests/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

type config struct {
	kubeconfig     string
	nodeName       string
	stateDir       string
	imageMapPath   string
	bridge         string
	netnsPrefix    string
	cidr           string
	apiHost        string
	apiPort        int
	backoffInitial time.Duration
	backoffMax     time.Duration
	volumeResync   time.Duration
	capacityCPU    string
	capacityMemory string
	capacityPods   int64
}

// agent holds what all pod workers share.
type agent struct {
	cfg      config
	client   kubernetes.Interface
	images   *imageMapFile
	net      *podNetwork
	self     string // path of this executable, for container-init
	events   record.EventRecorder
	bridgeIP net.IP

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	// finished remembers pods whose worker ended, so that late watch events
	// for them do not start them again.
	finished map[types.UID]time.Time
	wg       sync.WaitGroup
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "container-init" {
		containerInit(os.Args[2:])
		return
	}
	var cfg config
	host, _ := os.Hostname()
	flag.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of the node agent")
	flag.StringVar(&cfg.nodeName, "node-name", host, "name of the Node to register")
	flag.StringVar(&cfg.stateDir, "state-dir", "/tmp/handover-cluster/node", "per-pod directories (volumes, logs)")
	flag.StringVar(&cfg.imageMapPath, "image-map", "", "JSON file mapping image names to local commands")
	flag.StringVar(&cfg.bridge, "bridge", "handover0", "Linux bridge the pod veths attach to")
	flag.StringVar(&cfg.netnsPrefix, "netns-prefix", "ho-", "prefix of the pod network namespaces; stale ones with it are removed at start")
	flag.StringVar(&cfg.cidr, "pod-cidr", "10.244.0.0/24", "pod network; the bridge takes its first address")
	flag.StringVar(&cfg.apiHost, "api-host", "", "KUBERNETES_SERVICE_HOST given to containers (default: bridge address)")
	flag.IntVar(&cfg.apiPort, "api-port", 6443, "KUBERNETES_SERVICE_PORT given to containers")
	flag.DurationVar(&cfg.backoffInitial, "restart-backoff", time.Second, "first container restart back-off (kubelet: 10s)")
	flag.DurationVar(&cfg.backoffMax, "restart-backoff-max", 30*time.Second, "longest container restart back-off (kubelet: 5m)")
	flag.DurationVar(&cfg.volumeResync, "volume-resync", 5*time.Second, "how often Secret/ConfigMap/token volumes are refreshed")
	// Advertised, not enforced: generous so that tests with resource requests
	// schedule on a 2-core machine.
	flag.StringVar(&cfg.capacityCPU, "capacity-cpu", "32", "CPU capacity the Node advertises")
	flag.StringVar(&cfg.capacityMemory, "capacity-memory", "128Gi", "memory capacity the Node advertises")
	flag.Int64Var(&cfg.capacityPods, "capacity-pods", 250, "pod capacity the Node advertises")
	klog.InitFlags(nil)
	flag.Parse()
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "nodeagent:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	for _, q := range []string{cfg.capacityCPU, cfg.capacityMemory} {
		if _, err := resource.ParseQuantity(q); err != nil {
			return fmt.Errorf("capacity %q: %w", q, err)
		}
	}
	if cfg.imageMapPath == "" {
		return fmt.Errorf("--image-map is required")
	}
	images := &imageMapFile{path: cfg.imageMapPath}
	if _, err := loadImageMap(cfg.imageMapPath); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	pn, err := newPodNetwork(cfg.bridge, cfg.cidr, cfg.netnsPrefix)
	if err != nil {
		return err
	}
	if err := pn.setupBridge(); err != nil {
		return err
	}
	pn.cleanupStale()
	if cfg.apiHost == "" {
		cfg.apiHost = pn.gateway.String()
	}
	if err := os.MkdirAll(cfg.stateDir, 0o755); err != nil {
		return err
	}
	a := &agent{cfg: cfg, client: client, images: images, net: pn, self: self,
		bridgeIP: pn.gateway, workers: map[types.UID]*podWorker{}, finished: map[types.UID]time.Time{}}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.events = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.nodeName})

	go a.runNode(ctx)
	go a.serveLogs(ctx, net.JoinHostPort(a.bridgeIP.String(), "10250"))

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.nodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { a.podChanged(ctx, obj) },
		UpdateFunc: func(_, obj interface{}) { a.podChanged(ctx, obj) },
		DeleteFunc: func(obj interface{}) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				a.podGone(p)
			}
		},
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	klog.Infof("node agent for node %s started (bridge %s %s, image map %s)", cfg.nodeName, cfg.bridge, cfg.cidr, cfg.imageMapPath)
	<-ctx.Done()
	klog.Info("shutting down: stopping all pods")
	a.mu.Lock()
	for _, w := range a.workers {
		w.shutdown()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

func (a *agent) podChanged(ctx context.Context, obj interface{}) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.workers[p.UID]
	if !ok {
		if _, done := a.finished[p.UID]; done {
			return
		}
		w = newPodWorker(a, p)
		a.workers[p.UID] = w
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			w.run(ctx)
			a.mu.Lock()
			delete(a.workers, p.UID)
			now := time.Now()
			a.finished[p.UID] = now
			for uid, t := range a.finished {
				if now.Sub(t) > 10*time.Minute {
					delete(a.finished, uid)
				}
			}
			a.mu.Unlock()
		}()
		return
	}
	w.update(p)
}

func (a *agent) podGone(p *corev1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.workers[p.UID]; ok {
		w.removed()
	}
}
