package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/clipd/clipd/bench"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"
)

// harness holds what every measured run shares.
type harness struct {
	log         *slog.Logger
	scratch     string
	shaper      *bench.Shaper
	ref         string // the image, through the shaper
	clipdBin    string
	archive     string // clipd index with the default span size
	clipArchive string // clip's own index
	pullMethod  string // "go" or "skopeo+umoci"
	ws          *workloads
	seq         int
	// profiles: the clipd measured has prefetch profiles (issue #11), so
	// its mounts report prefetch figures and clipd-cold must see none.
	profiles bool

	runs     []bench.Run
	local    map[string][]float64 // workload → seconds on the pulled local tree
	cpu      map[string][]float64 // bench.Key → CPU seconds the contender itself used
	failures []string
}

// fresh returns a new empty scratch directory for one run.
func (h *harness) fresh(what string) (string, error) {
	h.seq++
	dir := filepath.Join(h.scratch, fmt.Sprintf("%s-%d", what, h.seq))
	return dir, os.MkdirAll(dir, 0o755)
}

// record stores a run with the shaper's counts since the last Reset.
func (h *harness) record(p bench.Profile, contender, workload string, took time.Duration, read int64, cpu float64) bench.Run {
	c := h.shaper.Counts()
	k := bench.Key(p.Name, contender, workload)
	h.cpu[k] = append(h.cpu[k], cpu)
	r := bench.Run{Profile: p.Name, Contender: contender, Workload: workload, Seconds: took.Seconds(),
		BytesMoved: c.Bytes, BytesRead: read, Requests: c.Requests}
	h.runs = append(h.runs, r)
	h.log.Info("run", "profile", p.Name, "contender", contender, "workload", workload,
		"seconds", fmt.Sprintf("%.3f", r.Seconds), "bytes_moved", r.BytesMoved, "bytes_read", r.BytesRead,
		"requests", r.Requests, "conns", c.Conns, "cpu", fmt.Sprintf("%.2f", cpu))
	return r
}

func (h *harness) fail(p bench.Profile, contender, workload string, err error) {
	msg := fmt.Sprintf("%s/%s/%s: %v", p.Name, contender, workload, err)
	h.failures = append(h.failures, msg)
	h.log.Error("run failed", "profile", p.Name, "contender", contender, "workload", workload, "err", err)
}

// fullPull pulls the whole image to a local directory, then runs the
// workload on it.
func (h *harness) fullPull(ctx context.Context, p bench.Profile, w string) error {
	dir, err := h.fresh("pull")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	h.shaper.Reset()
	cpu0 := selfCPU()
	start := time.Now()
	root := filepath.Join(dir, "rootfs")
	if h.pullMethod == "skopeo+umoci" {
		root, err = skopeoUmociPull(ctx, h.ref, dir)
	} else {
		err = goPull(ctx, h.ref, root, tr)
	}
	if err != nil {
		return err
	}
	pulled := time.Now()
	read, cleanup, err := h.ws.run(ctx, w, root)
	took := time.Since(start)
	workOnly := time.Since(pulled)
	cleanup()
	if err != nil {
		return err
	}
	h.record(p, bench.FullPull, w, took, read, selfCPU()-cpu0)
	h.local[w] = append(h.local[w], workOnly.Seconds())
	return nil
}

// clipV2 mounts clip's own index with clip.MountArchive (in this process)
// and an empty clip cache, then runs the workload on the mount.
func (h *harness) clipV2(ctx context.Context, p bench.Profile, w string) error {
	dir, err := h.fresh("clip")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mp := filepath.Join(dir, "mnt")
	// clip's registry clients use the default transports: drop their idle
	// connections so that every run starts cold.
	defer closeDefaultTransports()
	h.shaper.Reset()
	cpu0 := selfCPU()
	start := time.Now()
	serve, errc, server, err := clip.MountArchive(clip.MountOptions{ArchivePath: h.clipArchive, MountPoint: mp, CachePath: filepath.Join(dir, "cache")})
	if err != nil {
		return fmt.Errorf("clip.MountArchive: %w", err)
	}
	if err := serve(); err != nil {
		return fmt.Errorf("clip serve: %w", err)
	}
	if err := server.WaitMount(); err != nil {
		return fmt.Errorf("clip mount: %w", err)
	}
	defer func() {
		if err := server.Unmount(); err != nil {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
		select {
		case <-errc:
		case <-time.After(10 * time.Second):
			h.log.Warn("clip server did not stop", "mountpoint", mp)
		}
	}()
	read, cleanup, err := h.ws.run(ctx, w, mp)
	took := time.Since(start)
	cleanup()
	if err != nil {
		return err
	}
	h.record(p, bench.ClipV2, w, took, read, selfCPU()-cpu0)
	return nil
}

func closeDefaultTransports() {
	for _, rt := range []http.RoundTripper{http.DefaultTransport, remote.DefaultTransport} {
		if t, ok := rt.(*http.Transport); ok {
			t.CloseIdleConnections()
		}
	}
}

// clipd measures clipd-cold (a daemon started on an empty cache) and then
// clipd-warm (a new mount on the cache the cold run filled).
func (h *harness) clipd(ctx context.Context, p bench.Profile, w string) error {
	return h.clipdArchive(ctx, p, w, h.archive, true, bench.ClipdCold)
}

// clipdRef measures clipd-ref-cold: a daemon with an empty state directory
// (no index store) and an empty cache mounts the image by reference, so
// the manifest, the published index and the spans all come through the
// shaper within the timed span.
func (h *harness) clipdRef(ctx context.Context, p bench.Profile, w string) error {
	return h.clipdSource(ctx, p, w, h.ref, true, false, bench.ClipdRefCold)
}

// clipdArchive runs the clipd contenders on archive; with warm false only
// the cold run is made and recorded under coldName.
func (h *harness) clipdArchive(ctx context.Context, p bench.Profile, w, archive string, warm bool, coldName string) error {
	return h.clipdSource(ctx, p, w, archive, false, warm, coldName)
}

// clipdSource runs the clipd contenders on source: an archive path, or
// with image true an image reference.
func (h *harness) clipdSource(ctx context.Context, p bench.Profile, w, source string, image, warm bool, coldName string) error {
	dir, err := h.fresh("clipd")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d, err := startDaemon(ctx, h.clipdBin, dir, "")
	if err != nil {
		return err
	}
	defer d.stop()
	once := func(contender, name string) error {
		h.shaper.Reset()
		cpu0 := procCPU(d.cmd.Process.Pid)
		start := time.Now()
		m, err := d.mount(ctx, source, name, image, w == "runc")
		if err != nil {
			return err
		}
		// What came through the shaper before the mount was ready: for a
		// mount by reference, the manifest and the index fetched up front.
		upfront := h.shaper.Counts().Bytes
		if image && m.IndexSource != "registry" {
			_ = d.unmount(ctx, m.ID)
			return fmt.Errorf("mount by reference found its index in %q, want the registry", m.IndexSource)
		}
		read, took, cpu, err := h.timeWorkload(ctx, d, m, w, start, cpu0)
		if err != nil {
			return err
		}
		r := h.record(p, contender, w, took, read, cpu)
		if image {
			h.runs[len(h.runs)-1].IndexBytes = upfront
			h.log.Info("index fetched up front", "contender", contender, "bytes", upfront, "seconds_run", fmt.Sprintf("%.3f", r.Seconds))
		}
		if st, err := d.get(ctx, m.ID); err == nil {
			h.log.Debug("clipd mount stats", "contender", contender, "bytes_fetched", st.Stats.BytesFetched,
				"fuse_bytes_read", st.Stats.BytesRead, "requests", st.Stats.Requests)
			pf := st.prefetch(h.profiles)
			h.runs[len(h.runs)-1].Prefetch = pf
			// A fresh state directory has no profile: a cold start that
			// prefetched would not be a cold start without one. (The warm
			// mount may find the profile the cold one recorded at its
			// unmount, as a second start on a node would.)
			if pf != nil && pf.Planned > 0 && contender != bench.ClipdWarm {
				h.runs = h.runs[:len(h.runs)-1]
				k := bench.Key(p.Name, contender, w)
				h.cpu[k] = h.cpu[k][:len(h.cpu[k])-1]
				_ = d.unmount(ctx, m.ID)
				return fmt.Errorf("%s planned %d prefetch spans: it found a profile in its fresh state directory", contender, pf.Planned)
			}
		}
		return d.unmount(ctx, m.ID)
	}
	if err := once(coldName, "cold"); err != nil {
		return err
	}
	if warm {
		return once(bench.ClipdWarm, "warm")
	}
	return nil
}

// selfCPU returns the CPU seconds this process used so far: the in-process
// contenders (the Go pull, clip's FUSE server) run here.
func selfCPU() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// procCPU returns the CPU seconds (user + system) process pid used so far.
// timeWorkload runs workload w on mount m of d (from its bundle for runc)
// and returns the bytes it read, the time since start (the mount request),
// and the CPU time of clipd's daemon since cpu0 plus that of the mount's
// serving process. A failure leaves m unmounted.
func (h *harness) timeWorkload(ctx context.Context, d *daemon, m mountInfo, w string, start time.Time, cpu0 float64) (int64, time.Duration, float64, error) {
	if w == "runc" && (m.Bundle == "" || !m.Writable) {
		_ = d.unmount(ctx, m.ID)
		return 0, 0, 0, fmt.Errorf("clipd answered without a writable mount and bundle (bundle %q, writable %v)", m.Bundle, m.Writable)
	}
	read, cleanup, err := h.ws.runBundle(ctx, w, m.Mountpoint, m.Bundle)
	took := time.Since(start)
	cpu := procCPU(d.cmd.Process.Pid) - cpu0
	if m.PID > 0 && m.PID != d.cmd.Process.Pid {
		// A serving process of its own, started for this mount: all of
		// its CPU time belongs to this run.
		cpu += procCPU(m.PID)
	}
	cleanup()
	if err != nil {
		_ = d.unmount(ctx, m.ID)
		return 0, 0, 0, fmt.Errorf("%w (clipd log: %s)", err, d.logTail())
	}
	return read, took, cpu, nil
}

func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces: state is 3,
	// utime 14 and stime 15 (1-based, in clock ticks of 100 Hz).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100
}
