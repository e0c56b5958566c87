// Command gcp-peer serves, over ADS (SotW and delta), the resources meshcp compiled for a
// mesh, with go-control-plane's snapshot cache and server: the peer of
// benchmarks/peer_compare.py.
//
// The dump (benchmarks/peer_dump.py) holds every distinct resource once (the serialized
// google.protobuf.Any meshcp sends), each proxy class's resources and per-type versions,
// the node id -> class mapping of the simulated proxies, and the endpoint change (the
// resources that replace others, per class and type).
//
// Every proxy class gets one snapshot; a NodeHash maps each node to its class (by node id,
// as meshcp classifies a node by the proxy UUID in its id), so all proxies of a class share
// it. Types keep their own versions (meshcp's content versions), so the change bumps only
// the types it touches.
//
// The xDS port opens once every snapshot is set. HTTP: GET /stats (counters from the
// server callbacks, CPU, memory), POST /change (applies the endpoint change).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// the resource types of the dump, registered for anypb.UnmarshalNew
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// The dump's type order.
var typeURLs = [5]string{
	resource.ClusterType,
	resource.EndpointType,
	resource.ListenerType,
	resource.RouteType,
	resource.SecretType,
}

var shortNames = [5]string{"cds", "eds", "lds", "rds", "sds"}

type dumpResource struct {
	kind    int
	name    string
	version string
	message types.Resource
}

type classTypes struct {
	version string
	indices []uint32
}

type class struct {
	key   string
	types [5]classTypes
}

type changeEntry struct {
	key     string
	kind    int
	version string
	indices []uint32
	removed []string
}

type dump struct {
	resources []dumpResource
	classes   []class
	nodes     map[string]string // node id -> class key
	change    []changeEntry
}

type reader struct {
	r   *bufio.Reader
	err error
}

func (r *reader) u32() uint32 {
	var b [4]byte
	if r.err == nil {
		_, r.err = io.ReadFull(r.r, b[:])
	}
	return binary.LittleEndian.Uint32(b[:])
}

func (r *reader) u8() int {
	var b [1]byte
	if r.err == nil {
		_, r.err = io.ReadFull(r.r, b[:])
	}
	return int(b[0])
}

func (r *reader) blob() []byte {
	n := r.u32()
	if r.err != nil {
		return nil
	}
	b := make([]byte, n)
	_, r.err = io.ReadFull(r.r, b)
	return b
}

func (r *reader) text() string { return string(r.blob()) }

func (r *reader) indices() []uint32 {
	n := r.u32()
	out := make([]uint32, n)
	for i := range out {
		out[i] = r.u32()
	}
	return out
}

func readDump(path string) (*dump, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &reader{r: bufio.NewReaderSize(f, 1<<20)}
	magic := make([]byte, 8)
	if _, err := io.ReadFull(r.r, magic); err != nil || string(magic) != "MESHDMP1" {
		return nil, fmt.Errorf("%s: not a meshcp peer dump", path)
	}
	d := &dump{nodes: map[string]string{}}
	d.resources = make([]dumpResource, r.u32())
	for i := range d.resources {
		res := &d.resources[i]
		res.kind = r.u8()
		res.name = r.text()
		res.version = r.text()
		body := r.blob()
		if r.err != nil {
			break
		}
		packed := &anypb.Any{}
		if err := proto.Unmarshal(body, packed); err != nil {
			return nil, fmt.Errorf("resource %s: %w", res.name, err)
		}
		message, err := packed.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", res.name, err)
		}
		if packed.GetTypeUrl() != typeURLs[res.kind] {
			return nil, fmt.Errorf("resource %s: type %s, expected %s", res.name, packed.GetTypeUrl(), typeURLs[res.kind])
		}
		res.message = message
	}
	d.classes = make([]class, r.u32())
	for i := range d.classes {
		c := &d.classes[i]
		c.key = r.text()
		for k := range c.types {
			c.types[k].version = r.text()
			c.types[k].indices = r.indices()
		}
	}
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		node, _, key := r.text(), r.text(), r.text()
		d.nodes[node] = key
	}
	d.change = make([]changeEntry, r.u32())
	for i := range d.change {
		e := &d.change[i]
		e.key = r.text()
		e.kind = r.u8()
		e.version = r.text()
		e.indices = r.indices()
		e.removed = make([]string, r.u32())
		for j := range e.removed {
			e.removed[j] = r.text()
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("%s: truncated: %w", path, r.err)
	}
	return d, nil
}

// classHash maps a node to its proxy class: every proxy of a class shares one snapshot.
type classHash struct{ nodes map[string]string }

func (h classHash) ID(node *core.Node) string {
	if node == nil {
		return ""
	}
	if key, ok := h.nodes[node.GetId()]; ok {
		return key
	}
	return node.GetId()
}

// versionMap fills a snapshot's delta version map with the dump's (meshcp's content
// hashes) instead of letting the cache marshal and hash every resource.
func versionMap(s *cachev3.Snapshot, d *dump, c *class) {
	s.VersionMap = map[string]map[string]string{}
	for k, t := range c.types {
		m := make(map[string]string, len(t.indices))
		for _, i := range t.indices {
			m[d.resources[i].name] = d.resources[i].version
		}
		s.VersionMap[typeURLs[k]] = m
	}
}

func snapshotOf(d *dump, c *class, dumpVersions bool) *cachev3.Snapshot {
	s := &cachev3.Snapshot{}
	for k, t := range c.types {
		items := make(map[string]types.ResourceWithTTL, len(t.indices))
		for _, i := range t.indices {
			items[d.resources[i].name] = types.ResourceWithTTL{Resource: d.resources[i].message}
		}
		s.Resources[cachev3.GetResponseType(typeURLs[k])] = cachev3.Resources{Version: t.version, Items: items}
	}
	if dumpVersions {
		versionMap(s, d, c)
	}
	return s
}

type perType [5]atomic.Int64

func (p *perType) add(typeURL string, n int64) {
	for k, u := range typeURLs {
		if u == typeURL {
			p[k].Add(n)
			return
		}
	}
}

func (p *perType) snapshot() map[string]int64 {
	out := map[string]int64{}
	for k := range p {
		out[shortNames[k]] = p[k].Load()
	}
	return out
}

type counters struct {
	streams, open         atomic.Int64
	requests, acks, nacks perType
	responses, resources  perType
}

func (c *counters) request(typeURL, nonce string, failed bool) {
	c.requests.add(typeURL, 1)
	if nonce != "" {
		if failed {
			c.nacks.add(typeURL, 1)
		} else {
			c.acks.add(typeURL, 1)
		}
	}
}

func (c *counters) callbacks() serverv3.CallbackFuncs {
	opened := func(context.Context, int64, string) error {
		c.streams.Add(1)
		c.open.Add(1)
		return nil
	}
	closed := func(int64, *core.Node) { c.open.Add(-1) }
	return serverv3.CallbackFuncs{
		StreamOpenFunc:        opened,
		StreamClosedFunc:      closed,
		DeltaStreamOpenFunc:   opened,
		DeltaStreamClosedFunc: closed,
		StreamRequestFunc: func(_ int64, r *discoverygrpc.DiscoveryRequest) error {
			c.request(r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail() != nil)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoverygrpc.DiscoveryRequest, r *discoverygrpc.DiscoveryResponse) {
			c.responses.add(r.GetTypeUrl(), 1)
			c.resources.add(r.GetTypeUrl(), int64(len(r.GetResources())))
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoverygrpc.DeltaDiscoveryRequest) error {
			c.request(r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail() != nil)
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoverygrpc.DeltaDiscoveryRequest, r *discoverygrpc.DeltaDiscoveryResponse) {
			c.responses.add(r.GetTypeUrl(), 1)
			c.resources.add(r.GetTypeUrl(), int64(len(r.GetResources())))
		},
	}
}

type peer struct {
	dump         *dump
	cache        cachev3.SnapshotCache
	snapshots    map[string]*cachev3.Snapshot
	dumpVersions bool
	counters     counters
	mu           sync.Mutex
	changed      bool
	started      time.Time
	loadSeconds  float64
}

// applyChange replaces the changed resources of every class the change touches, bumps the
// changed types' versions and sets the new snapshots.
func (p *peer) applyChange() (map[string]any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed {
		return nil, fmt.Errorf("the change was applied already")
	}
	began := time.Now()
	fresh := map[string]*cachev3.Snapshot{}
	for _, e := range p.dump.change {
		s, ok := fresh[e.key]
		if !ok {
			old := p.snapshots[e.key]
			if old == nil {
				return nil, fmt.Errorf("class %q not in the dump", e.key)
			}
			s = &cachev3.Snapshot{Resources: old.Resources}
			if p.dumpVersions && old.VersionMap != nil {
				s.VersionMap = map[string]map[string]string{}
				for t, m := range old.VersionMap {
					s.VersionMap[t] = m
				}
			}
			fresh[e.key] = s
		}
		index := cachev3.GetResponseType(typeURLs[e.kind])
		items := make(map[string]types.ResourceWithTTL, len(s.Resources[index].Items)+len(e.indices))
		for name, item := range s.Resources[index].Items {
			items[name] = item
		}
		for _, name := range e.removed {
			delete(items, name)
		}
		for _, i := range e.indices {
			items[p.dump.resources[i].name] = types.ResourceWithTTL{Resource: p.dump.resources[i].message}
		}
		s.Resources[index] = cachev3.Resources{Version: e.version, Items: items}
		if s.VersionMap != nil {
			m := make(map[string]string, len(items))
			for name, v := range s.VersionMap[typeURLs[e.kind]] {
				m[name] = v
			}
			for _, name := range e.removed {
				delete(m, name)
			}
			for _, i := range e.indices {
				m[p.dump.resources[i].name] = p.dump.resources[i].version
			}
			s.VersionMap[typeURLs[e.kind]] = m
		}
	}
	built := time.Since(began)
	for key, s := range fresh {
		if err := p.cache.SetSnapshot(context.Background(), key, s); err != nil {
			return nil, err
		}
		p.snapshots[key] = s
	}
	p.changed = true
	return map[string]any{
		"classes":  len(fresh),
		"build_ms": float64(built.Microseconds()) / 1000,
		"total_ms": float64(time.Since(began).Microseconds()) / 1000,
	}, nil
}

func statusKB(key string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, key+":") {
			fields := strings.Fields(line)
			if len(fields) >= 2 {
				n, _ := strconv.ParseInt(fields[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

func (p *peer) stats() map[string]any {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := float64(usage.Utime.Sec+usage.Stime.Sec) + float64(usage.Utime.Usec+usage.Stime.Usec)/1e6
	c := &p.counters
	return map[string]any{
		"streams":    c.streams.Load(),
		"open":       c.open.Load(),
		"requests":   c.requests.snapshot(),
		"acks":       c.acks.snapshot(),
		"nacks":      c.nacks.snapshot(),
		"responses":  c.responses.snapshot(),
		"resources":  c.resources.snapshot(),
		"cpu_s":      cpu,
		"rss_mb":     float64(statusKB("VmRSS")) / 1024,
		"hwm_mb":     float64(statusKB("VmHWM")) / 1024,
		"load_s":     p.loadSeconds,
		"goroutines": runtime.NumGoroutine(),
		"classes":    len(p.snapshots),
		"distinct":   len(p.dump.resources),
	}
}

func (p *peer) serveHTTP(address string) (net.Listener, error) {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, body map[string]any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusConflict)
			body = map[string]any{"error": err.Error()}
		}
		_ = json.NewEncoder(w).Encode(body)
	}
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { reply(w, p.stats(), nil) })
	mux.HandleFunc("POST /change", func(w http.ResponseWriter, _ *http.Request) {
		body, err := p.applyChange()
		reply(w, body, err)
	})
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return nil, err
	}
	go func() { _ = http.Serve(listener, mux) }()
	return listener, nil
}

func main() {
	dumpPath := flag.String("dump", "", "the dump written by benchmarks/peer_dump.py")
	xdsAddress := flag.String("xds", "127.0.0.1:18000", "xDS (gRPC, plaintext) listen address")
	httpAddress := flag.String("http", "127.0.0.1:18001", "stats and change listen address")
	ads := flag.Bool("ads", false, "the snapshot cache's ADS mode (hold responses until every requested name exists)")
	versions := flag.String("delta-versions", "hash", "delta resource versions: hash (go-control-plane marshals and hashes each resource) or dump (meshcp's)")
	flag.Parse()
	if *dumpPath == "" {
		log.Fatal("-dump is required")
	}
	started := time.Now()
	d, err := readDump(*dumpPath)
	if err != nil {
		log.Fatal(err)
	}
	p := &peer{
		dump:         d,
		snapshots:    map[string]*cachev3.Snapshot{},
		dumpVersions: *versions == "dump",
		started:      started,
	}
	p.cache = cachev3.NewSnapshotCache(*ads, classHash{nodes: d.nodes}, nil)
	for i := range d.classes {
		c := &d.classes[i]
		s := snapshotOf(d, c, p.dumpVersions)
		p.snapshots[c.key] = s
		if err := p.cache.SetSnapshot(context.Background(), c.key, s); err != nil {
			log.Fatal(err)
		}
	}
	p.loadSeconds = time.Since(started).Seconds()

	httpListener, err := p.serveHTTP(*httpAddress)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	xds := serverv3.NewServer(ctx, p.cache, p.counters.callbacks())
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)
	listener, err := net.Listen("tcp", *xdsAddress)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("gcp-peer: %d resources, %d classes, %d nodes loaded in %.2f s; xDS on %s, HTTP on %s\n",
		len(d.resources), len(d.classes), len(d.nodes), p.loadSeconds, listener.Addr(), httpListener.Addr())
	if err := grpcServer.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
