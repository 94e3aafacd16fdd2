package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// metricsOf scrapes d's /metrics and parses it with Prometheus's parser.
func metricsOf(t testing.TB, c *api.Client) testenv.Metrics {
	t.Helper()
	text, err := c.Metrics(context.Background())
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	m, err := testenv.ParseMetrics(text)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return m
}

// wantMetric checks the type of family name and that the series with
// labels sum to at least min (the sample count for a histogram).
func wantMetric(t testing.TB, m testenv.Metrics, name, kind string, labels map[string]string, min float64) {
	t.Helper()
	if got := m.Type(name); got != kind {
		t.Errorf("%s is a %q, want a %s", name, got, kind)
	}
	if v, ok := m.Value(name, labels); !ok || v < min {
		t.Errorf("%s%v = %v (found: %v), want at least %v", name, labels, v, ok, min)
	}
}

// TestMetricsReadErrors: a registry that answers 503 for every blob makes
// reads of files not yet cached fail with EIO; the failure shows in the
// mount's figures (GET /v1/mounts/ID, `clipd ls`), in the per-mount and
// per-host error counters and latency histograms of /metrics, and in the
// summary line logged at unmount. Once the registry is back, the same file
// reads without a remount.
func TestMetricsReadErrors(t *testing.T) {
	requireE2ETools(t)
	host := testenv.StartRegistry(t)
	files := sharedImages(t, host, 1, 8, 2, 256<<10)[0]
	proxy := testenv.StartCountingProxy(t, host)
	d := startDaemon(t)
	c := api.NewClient(d.socket)
	defer c.CloseIdleConnections()
	archive := indexAll(t, d, proxy.Addr, 1, "256KiB")[0]
	id, mp := d.mount(t, archive, "img")

	good, bad := files[0], files[7]
	if got, err := os.ReadFile(filepath.Join(mp, good.path)); err != nil || !bytes.Equal(got, good.data) {
		t.Fatalf("%s: %v, or bytes differ", good.path, err)
	}
	proxy.SetFail(func(r *http.Request) int {
		if testenv.BlobDigest(r.URL.Path) != "" {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	start := time.Now()
	_, err := os.ReadFile(filepath.Join(mp, bad.path))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading %s with the registry failing: %v, want EIO", bad.path, err)
	}
	t.Logf("EIO after %s (503 for every try)", time.Since(start).Round(time.Millisecond))

	mi, err := c.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	st := mi.Stats
	if mi.State != api.MountActive || st.ReadErrors < 1 || st.FetchErrors < 1 || !strings.Contains(st.LastError, "503") ||
		st.LastErrorTime.Before(start.Add(-time.Second)) || st.LastErrorTime.After(time.Now()) {
		t.Errorf("GET /v1/mounts/%s after a failed read: state %s, %+v", id, mi.State, st)
	}

	ls := d.clipd(t, "ls")
	lines := strings.Split(strings.TrimSpace(ls), "\n")
	head := lines[0]
	col := strings.Index(head, "ERRORS")
	if col < 0 || !strings.Contains(head, "LAST ERROR") || len(lines) != 2 || len(lines[1]) < col {
		t.Fatalf("clipd ls has no ERRORS and LAST ERROR columns:\n%s", ls)
	}
	fields := strings.Fields(lines[1][col:])
	if n, err := strconv.Atoi(fields[0]); err != nil || n != int(st.ReadErrors) && n < 1 || !strings.Contains(lines[1][col:], "ago:") {
		t.Errorf("clipd ls: ERRORS/LAST ERROR columns of the failing mount: %q", lines[1][col:])
	}
	t.Logf("clipd ls:\n%s", ls)

	m := metricsOf(t, c)
	mine := map[string]string{"id": id, "mountpoint": mp}
	wantMetric(t, m, "clipd_mount_read_errors_total", "counter", mine, 1)
	wantMetric(t, m, "clipd_read_errors_total", "counter", nil, 1)
	wantMetric(t, m, "clipd_span_fetch_errors_total", "counter", map[string]string{"id": id, "host": proxy.Addr, "kind": "5xx"}, 1)
	// The first try and every retry: 1 + 4 per failed fetch.
	wantMetric(t, m, "clipd_registry_request_errors_total", "counter", map[string]string{"id": id, "host": proxy.Addr, "kind": "5xx"}, 5)
	wantMetric(t, m, "clipd_span_fetch_duration_seconds", "histogram", map[string]string{"id": id, "host": proxy.Addr}, 2)
	wantMetric(t, m, "clipd_fuse_read_duration_seconds", "histogram", mine, 2)
	wantMetric(t, m, "clipd_mount_request_duration_seconds", "histogram", map[string]string{"code": "201"}, 1)
	wantMetric(t, m, "clipd_mount_info", "gauge", map[string]string{"id": id, "mountpoint": mp, "pid": strconv.Itoa(mi.PID), "version": mi.Version}, 1)
	wantMetric(t, m, "clipd_mount_up", "gauge", mine, 1)
	wantMetric(t, m, "clipd_build_info", "gauge", nil, 1)
	wantMetric(t, m, "go_goroutines", "gauge", nil, 1)
	wantMetric(t, m, "process_open_fds", "gauge", nil, 1)
	for _, s := range m.Series("clipd_mount_up", nil) {
		if l := testenv.Labels(s); len(l) != 2 {
			t.Errorf("clipd_mount_up carries %v: only id and mountpoint keep a series across restarts", l)
		}
	}
	for _, err := range m.CheckConventions("clipd_") {
		t.Error(err)
	}

	// The registry is back: the same file reads, no remount needed (once
	// the short memory of the failed range, which spares the kernel's
	// immediate retry a second wait, has passed).
	proxy.SetFail(nil)
	waitFor(t, bad.path+" to read right once the registry is back", 10*time.Second, func() bool {
		got, err := os.ReadFile(filepath.Join(mp, bad.path))
		return err == nil && bytes.Equal(got, bad.data)
	})
	// The retries above failed reads too: the summary must give the count
	// the mount reports last.
	if mi, err = c.Get(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	st = mi.Stats

	d.umount(t, id, mp)
	logs := func() string { b, _ := os.ReadFile(d.log); return string(b) }
	waitFor(t, "the summary line of the unmounted mount", 10*time.Second, func() bool {
		return strings.Contains(logs(), "mount ended")
	})
	var summary string
	for _, l := range strings.Split(logs(), "\n") {
		if strings.Contains(l, "mount ended") {
			summary = l
		}
	}
	t.Logf("summary at unmount: %s", summary)
	for _, want := range []string{"bytes_read=", "requests=", "read_errors=" + strconv.FormatInt(st.ReadErrors, 10), "first_byte=", "duration="} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary line lacks %q: %s", want, summary)
		}
	}
	// API calls succeeded: their access lines are DEBUG, never INFO.
	if l := logs(); strings.Contains(l, "level=INFO msg=api") || !strings.Contains(l, "level=DEBUG msg=api") {
		t.Errorf("API access lines should be at DEBUG:\n%s", l)
	}
}

// leakBaseline is what a daemon holds when idle: open descriptors (from
// /proc), goroutines (from its metrics), clipd mounts under its mount root
// and serving processes.
type leakBaseline struct {
	fds, goroutines int
}

func daemonFDs(t testing.TB, d *daemon) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func goroutines(t testing.TB, c *api.Client) int {
	t.Helper()
	v, ok := metricsOf(t, c).Value("go_goroutines", nil)
	if !ok {
		t.Fatal("no go_goroutines in /metrics")
	}
	return int(v)
}

func baseline(t testing.TB, d *daemon, c *api.Client) leakBaseline {
	t.Helper()
	c.CloseIdleConnections()
	return leakBaseline{fds: daemonFDs(t, d), goroutines: goroutines(t, c)}
}

// checkNoLeaks waits (10s at most) for d to come back to base: as many
// descriptors, at most a few more goroutines (the runtime's own come and
// go), no clipd mount under its mount root, no serving process.
func checkNoLeaks(t testing.TB, d *daemon, c *api.Client, base leakBaseline) {
	t.Helper()
	var fds, gs int
	var mounts []string
	var procs []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.CloseIdleConnections()
		fds, gs = daemonFDs(t, d), goroutines(t, c)
		mounts, procs = clipdMounts(t, d.mountRoot), servingPIDs(t, d.mountRoot)
		if fds <= base.fds && gs <= base.goroutines+3 && len(mounts) == 0 && len(procs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: %d fds (was %d), %d goroutines (was %d), mounts %v, serving processes %v",
				fds, base.fds, gs, base.goroutines, mounts, procs)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after: %d fds (before %d), %d goroutines (before %d)", fds, base.fds, gs, base.goroutines)
}

// TestLoadManyMountsReaders: 20 mounts of one image, 4 readers each,
// reading every file at once: every byte is right, every span of the
// layers is fetched from the registry once, and after unmounting the
// daemon holds no more descriptors, goroutines, mounts or processes than
// before.
func TestLoadManyMountsReaders(t *testing.T) {
	requireE2ETools(t)
	const mounts, readers = 20, 4
	host := testenv.StartRegistry(t)
	files := sharedImages(t, host, 1, 12, 4, 128<<10)[0]
	proxy := testenv.StartCountingProxy(t, host)
	d := startDaemon(t)
	c := api.NewClient(d.socket)
	defer c.CloseIdleConnections()
	archive := indexAll(t, d, proxy.Addr, 1, "256KiB")[0]
	base := baseline(t, d, c)

	done := timed(t, fmt.Sprintf("%d mounts", mounts))
	ids := make([]string, mounts)
	mps := make([]string, mounts)
	for i := range mounts {
		ids[i], mps[i] = d.mount(t, archive, fmt.Sprintf("m%02d", i))
	}
	done()
	proxy.Reset()
	done = timed(t, fmt.Sprintf("%d mounts × %d readers read every file", mounts, readers))
	var wg sync.WaitGroup
	for _, mp := range mps {
		for r := range readers {
			wg.Go(func() {
				for k := range files {
					f := files[(k+r*len(files)/readers)%len(files)]
					got, err := os.ReadFile(filepath.Join(mp, f.path))
					if err != nil || !bytes.Equal(got, f.data) {
						t.Errorf("%s in %s: %v, or bytes differ", f.path, mp, err)
					}
				}
			})
		}
	}
	wg.Wait()
	done()
	// Count, per blob, how often each byte was asked for: neighbouring
	// spans share a byte, so a range is counted from its second byte.
	m := metricsOf(t, c)
	var reqs float64
	for _, s := range m.Series("clipd_span_fetch_duration_seconds", nil) {
		reqs += float64(s.Histogram.GetSampleCount())
	}
	if reqs == 0 {
		t.Errorf("no span fetch in the histograms of %d mounts", mounts)
	}
	for _, err := range m.CheckConventions("clipd_") {
		t.Error(err)
	}
	seen := map[string]map[int64]int{}
	a, err := index.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Layers {
		seen[l.Digest] = map[int64]int{}
		for _, r := range proxy.Blob(l.Digest) {
			var from, to int64
			if _, err := fmt.Sscanf(r.Range, "bytes=%d-%d", &from, &to); err != nil {
				t.Fatalf("blob request without a closed range: %+v", r)
			}
			for _, s := range l.Spans.Spans {
				if s.COff >= from && s.CEnd-1 <= to {
					seen[l.Digest][s.COff]++
				}
			}
		}
		for _, s := range l.Spans.Spans {
			if n := seen[l.Digest][s.COff]; n != 1 {
				t.Errorf("layer %s: span at %d fetched %d times by %d mounts, want once", l.Digest[:19], s.COff, n, mounts)
			}
		}
	}
	t.Logf("%d span fetches in the histograms for %d mounts × %d readers", int(reqs), mounts, readers)

	done = timed(t, "unmount all")
	for i := range mounts {
		d.umount(t, ids[i], mps[i])
	}
	done()
	checkNoLeaks(t, d, c, base)
}

// TestLoadMountUnmountCycles: 400 mount/unmount cycles through the API (4
// at a time, each with a read) leave the daemon with no more descriptors,
// goroutines, mounts or serving processes than after the first few.
func TestLoadMountUnmountCycles(t *testing.T) {
	requireE2ETools(t)
	const cycles, workers = 400, 4
	host := testenv.StartRegistry(t)
	files := sharedImages(t, host, 1, 4, 1, 16<<10)[0]
	d := startDaemon(t)
	c := api.NewClient(d.socket)
	defer c.CloseIdleConnections()
	archive := indexAll(t, d, host, 1, "256KiB")[0]
	ctx := context.Background()
	cycle := func(mp string, k int) error {
		mi, err := c.Mount(ctx, api.CreateMount{Archive: archive, Mountpoint: mp})
		if err != nil {
			return fmt.Errorf("cycle %d: mount: %w", k, err)
		}
		f := files[k%len(files)]
		got, err := os.ReadFile(filepath.Join(mp, f.path))
		if err == nil && !bytes.Equal(got, f.data) {
			err = errors.New("bytes differ")
		}
		if err != nil {
			return fmt.Errorf("cycle %d: read %s: %w", k, f.path, err)
		}
		if _, err := c.Unmount(ctx, mi.ID, false); err != nil {
			return fmt.Errorf("cycle %d: unmount: %w", k, err)
		}
		return nil
	}
	mps := make([]string, workers)
	for w := range workers {
		mps[w] = filepath.Join(d.mountRoot, fmt.Sprintf("w%d", w))
		if err := os.MkdirAll(mps[w], 0o755); err != nil {
			t.Fatal(err)
		}
		// Warm up: the first cycles open what the daemon keeps (the
		// cache's ledger, connections).
		if err := cycle(mps[w], w); err != nil {
			t.Fatal(err)
		}
	}
	base := baseline(t, d, c)
	done := timed(t, fmt.Sprintf("%d mount/unmount cycles, %d at a time", cycles, workers))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := w; k < cycles; k += workers {
				if err := cycle(mps[w], k); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	done()
	checkNoLeaks(t, d, c, base)
	if v, _ := metricsOf(t, c).Value("clipd_mount_request_duration_seconds", map[string]string{"code": "201"}); v < cycles+workers {
		t.Errorf("clipd_mount_request_duration_seconds counted %v mounts, want %d", v, cycles+workers)
	}
}
