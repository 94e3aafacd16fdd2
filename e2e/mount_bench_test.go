package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beam-cloud/clip/pkg/clip"
	"golang.org/x/sys/unix"

	"github.com/clipd/clipd/bench"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/scaletree"
)

// BenchmarkMountRequest times the mount request (POST /v1/mounts of an
// archive, until its 201) of debian-python through a real daemon, and, in
// the same iterations, clip v2's MountArchive of clip's own index of the
// same image until its mount is live. Each iteration makes one of each,
// alternately, so that both see the same machine; unmounting is not timed.
// A second daemon with daemon.spare_serving_process = false (every mount
// starts its serving process with fork/exec) is timed in the same
// iterations; the first daemon's spare is given time to be ready again
// (untimed) before the others are timed, so that its start does not load
// their measurements.
// Figures: the medians and their ratio (issue #11 asks for at most 0.5 and
// 40 ms):
//
//	go test ./e2e -run XXX -bench MountRequest -benchtime 20x
func BenchmarkMountRequest(b *testing.B) {
	requireE2ETools(b)
	_, host := pushedDebianPython(b)
	ref := host + "/debian:python"
	d := startDaemon(b)
	cleanupMounts(b, d)
	work := b.TempDir()
	archive := d.index(b, ref, filepath.Join(work, "python.clip"))
	if err := clip.SetLogLevel("warn"); err != nil {
		b.Fatal(err)
	}
	clipArchive := filepath.Join(work, "by-clip.clip")
	if err := clip.CreateFromOCIImage(context.Background(), clip.CreateFromOCIImageOptions{ImageRef: ref, OutputPath: clipArchive}); err != nil {
		b.Fatalf("clip.CreateFromOCIImage %s: %v", ref, err)
	}
	client := d.client()
	noSpare := newDaemonConfig(b, "", "")
	cfg, err := os.ReadFile(noSpare.config)
	if err != nil {
		b.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("log_level = \"debug\"\n"), []byte("log_level = \"debug\"\nspare_serving_process = false\n"), 1)
	if err := os.WriteFile(noSpare.config, cfg, 0o644); err != nil {
		b.Fatal(err)
	}
	noSpare = launch(b, noSpare)
	cleanupMounts(b, noSpare)
	execClient := noSpare.client()
	var clipd, clipdExec, clipv2 []time.Duration
	n := 0
	for b.Loop() {
		n++
		took, info := timedMount(b, client, d, archive, fmt.Sprintf("m%d", n))
		clipd = append(clipd, took)
		unmountByID(b, client, info.ID)
		// The next spare starts now: not while the others are timed.
		time.Sleep(300 * time.Millisecond)

		took, info = timedMount(b, execClient, noSpare, archive, fmt.Sprintf("e%d", n))
		clipdExec = append(clipdExec, took)
		unmountByID(b, execClient, info.ID)

		mp := filepath.Join(work, fmt.Sprintf("clip%d", n))
		if err := os.MkdirAll(mp, 0o755); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		serve, errc, server, err := clip.MountArchive(clip.MountOptions{ArchivePath: clipArchive, MountPoint: mp, CachePath: filepath.Join(work, "clip-cache")})
		if err != nil {
			b.Fatalf("clip.MountArchive: %v", err)
		}
		if err := serve(); err != nil {
			b.Fatalf("clip serve: %v", err)
		}
		if err := server.WaitMount(); err != nil {
			b.Fatalf("clip mount: %v", err)
		}
		clipv2 = append(clipv2, time.Since(start))
		if err := server.Unmount(); err != nil {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
		select {
		case <-errc:
		case <-time.After(10 * time.Second):
			b.Fatalf("clip's server at %s did not stop", mp)
		}
	}
	mc, me, mv := median(clipd), median(clipdExec), median(clipv2)
	b.ReportMetric(ms(mc), "clipd-ms/mount")
	b.ReportMetric(ms(me), "clipd-nospare-ms/mount")
	b.ReportMetric(ms(mv), "clip-ms/mount")
	b.ReportMetric(float64(mc)/float64(mv), "clipd/clip")
	b.ReportMetric(float64(me)/float64(mv), "clipd-nospare/clip")
	b.Logf("clipd (spare serving process): median %v of %v", mc, clipd)
	b.Logf("clipd (spare_serving_process = false): median %v of %v", me, clipdExec)
	b.Logf("clip MountArchive: median %v of %v", mv, clipv2)
	logPhases(b, "clipd (spare)", d.log)
	logPhases(b, "clipd (no spare)", noSpare.log)
}

// phaseMessages are the debug lines that time a mount request's phases:
// the daemon's and its serving process's (README, "Fast mounts").
var phaseMessages = []string{"mount request phases", "serving process start-up", "mount phases", "registry access checked", "spare serving process ready"}

// logPhases logs the median of every duration the phase lines of the
// daemon log at path carry, so that a run says where its time went.
func logPhases(b *testing.B, what, path string) {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Logf("%s: phases: %v", what, err)
		return
	}
	for _, msg := range phaseMessages {
		var keys []string
		vals := map[string][]time.Duration{}
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, `msg="`+msg+`"`) {
				continue
			}
			for _, f := range strings.Fields(line) {
				k, v, ok := strings.Cut(f, "=")
				if !ok || k == "time" {
					continue
				}
				d, err := time.ParseDuration(v)
				if err != nil {
					continue
				}
				if _, seen := vals[k]; !seen {
					keys = append(keys, k)
				}
				vals[k] = append(vals[k], d)
			}
		}
		if len(keys) == 0 {
			continue
		}
		var sb strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&sb, " %s=%v", k, median(vals[k]).Round(10*time.Microsecond))
		}
		b.Logf("%s: %q medians of %d:%s", what, msg, len(vals[keys[0]]), sb.String())
	}
}

// BenchmarkMountRequestRegion times debian-python's mount request with its
// registry behind the benchmark's shaper at the region profile (bench:
// 20 ms per request and per new connection), where the registry access
// check (fetcher.CheckAccess) is bound by round trips, not by the CPU: it
// shows what running the check beside the FUSE mount saves there. The
// archive is local, as in MountRequest; nothing else is fetched at mount:
//
//	go test ./e2e -run XXX -bench MountRequestRegion -benchtime 10x
func BenchmarkMountRequestRegion(b *testing.B) {
	requireE2ETools(b)
	_, host := pushedDebianPython(b)
	sh, err := bench.StartShaper(host)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sh.Close() })
	d := startDaemon(b)
	cleanupMounts(b, d)
	archive := d.index(b, sh.Addr+"/debian:python", filepath.Join(b.TempDir(), "python.clip"))
	region, ok := bench.ProfileByName("region")
	if !ok {
		b.Fatal("no region profile")
	}
	sh.SetProfile(region)
	client := d.client()
	var took []time.Duration
	n := 0
	for b.Loop() {
		n++
		t, info := timedMount(b, client, d, archive, fmt.Sprintf("r%d", n))
		took = append(took, t)
		unmountByID(b, client, info.ID)
		// The next spare starts now: not while the next mount is timed.
		time.Sleep(300 * time.Millisecond)
	}
	b.ReportMetric(ms(median(took)), "ms/mount")
	b.Logf("clipd (spare, registry at %s RTT): median %v of %v", region.RTT, median(took), took)
	logPhases(b, "clipd (region)", d.log)
}

// BenchmarkMountScale times the mount request of a generated index of
// 100,000 files in 10 layers (scaletree.Archive: only the index exists; a mount
// reads no layer) and reads the serving process's peak resident memory
// (VmHWM) once the mount is live. Issue #11 asks for at most 200 ms and
// 64 MiB; the memory is asserted loosely (twice that), the time not at all:
//
//	go test ./e2e -run XXX -bench MountScale -benchtime 10x
func BenchmarkMountScale(b *testing.B) {
	requireE2ETools(b)
	d := startDaemon(b)
	cleanupMounts(b, d)
	archive := filepath.Join(b.TempDir(), "scale.clip")
	a := scaletree.Archive(100_000, 10)
	if err := index.WriteFile(archive, a); err != nil {
		b.Fatal(err)
	}
	if fi, err := os.Stat(archive); err == nil {
		b.Logf("%d nodes, %d layers: %.1f MiB index", len(a.Nodes), len(a.Layers), float64(fi.Size())/(1<<20))
	}
	client := d.client()
	var took []time.Duration
	var hwm, rss int64
	n := 0
	for b.Loop() {
		n++
		t, info := timedMount(b, client, d, archive, fmt.Sprintf("s%d", n))
		took = append(took, t)
		// The tree answers: a deep file is found and has its size.
		var st unix.Stat_t
		p := filepath.Join(info.Mountpoint, "usr/lib099/pkg09/module_099.py")
		if err := unix.Stat(p, &st); err != nil || st.Size != 20<<10 {
			b.Fatalf("stat %s: size %d, %v", p, st.Size, err)
		}
		h, r := procMemory(b, info.PID)
		hwm, rss = max(hwm, h), max(rss, r)
		unmountByID(b, client, info.ID)
	}
	b.ReportMetric(ms(median(took)), "ms/mount")
	b.ReportMetric(float64(hwm)/(1<<20), "VmHWM-MiB")
	b.ReportMetric(float64(rss)/(1<<20), "VmRSS-MiB")
	b.Logf("mount requests: median %v of %v; serving process VmHWM %d KiB, VmRSS %d KiB", median(took), took, hwm>>10, rss>>10)
	logPhases(b, "clipd", d.log)
	if hwm > 128<<20 {
		b.Errorf("serving process of a 100,000-file mount peaked at %d MiB, more than twice the 64 MiB target", hwm>>20)
	}
}

type mountAnswer struct {
	ID         string `json:"id"`
	Mountpoint string `json:"mountpoint"`
	PID        int    `json:"pid"`
}

// timedMount asks d to mount archive at <mount root>/name and returns the
// time to its 201.
func timedMount(b *testing.B, c *http.Client, d *daemon, archive, name string) (time.Duration, mountAnswer) {
	b.Helper()
	mp := filepath.Join(d.mountRoot, name)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"archive": archive, "mountpoint": mp})
	start := time.Now()
	resp, err := c.Post("http://clipd/v1/mounts", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("mount %s: %d %s (%v)\n%s", archive, resp.StatusCode, out, err, d.logTail())
	}
	var info mountAnswer
	if err := json.Unmarshal(out, &info); err != nil || info.ID == "" {
		b.Fatalf("mount answer %s: %v", out, err)
	}
	return took, info
}

func unmountByID(b *testing.B, c *http.Client, id string) {
	b.Helper()
	req, _ := http.NewRequest(http.MethodDelete, "http://clipd/v1/mounts/"+id, nil)
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("unmount %s: %d %s", id, resp.StatusCode, out)
	}
}

// procMemory reads VmHWM and VmRSS of pid, in bytes.
func procMemory(b *testing.B, pid int) (hwm, rss int64) {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/status %s: %q", pid, k, v)
		}
		if k == "VmHWM" {
			hwm = kb << 10
		} else {
			rss = kb << 10
		}
	}
	if hwm == 0 {
		b.Fatalf("/proc/%d/status has no VmHWM", pid)
	}
	return hwm, rss
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
