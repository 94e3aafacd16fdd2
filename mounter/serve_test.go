package mounter

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/sys/unix"
)

// serveInProcess runs ServeMount as a serving process would and returns its
// first report line and a channel with its result.
func serveInProcess(t *testing.T, ctx context.Context, o ServeOptions) (readyMsg, <-chan error) {
	t.Helper()
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	o.Report = wr
	if o.Mounter.Logger == nil {
		o.Mounter.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	o.Level = new(slog.LevelVar)
	res := make(chan error, 1)
	go func() { res <- ServeMount(ctx, o) }()
	line, err := bufio.NewReader(rd).ReadBytes('\n')
	if err != nil {
		t.Fatalf("no report line: %v", err)
	}
	var m readyMsg
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("report %q: %v", line, err)
	}
	return m, res
}

func TestServeMountControl(t *testing.T) {
	clip, big := fixture(t)
	dir, err := os.MkdirTemp("", "clipd-serve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	control := filepath.Join(dir, "serve", "m1.sock")
	o := ServeOptions{ID: "m1", Archive: clip, Mountpoint: mp, Control: control, Version: "v9",
		Mounter: Config{CacheDir: filepath.Join(dir, "cache")}}
	msg, res := serveInProcess(t, context.Background(), o)
	defer unix.Unmount(mp, unix.MNT_DETACH)
	if !msg.OK || msg.PID != os.Getpid() || msg.Version != "v9" || !strings.Contains(string(msg.Image), `"layers":2`) {
		t.Fatalf("ready report: %+v", msg)
	}
	if fi, err := os.Stat(control); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v %v, want mode 0600", fi, err)
	}
	c := newControlClient(control)
	ctx := context.Background()
	info, err := c.info(ctx)
	if err != nil || info.ID != "m1" || info.PID != os.Getpid() || info.Mountpoint != mp || info.Version != "v9" {
		t.Fatalf("info: %+v %v", info, err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data/big")); err != nil || len(got) != len(big) {
		t.Fatalf("read: %d %v", len(got), err)
	}
	if st, err := c.stats(ctx); err != nil || st.Reads == 0 || st.BytesRead < int64(len(big)) || st.ReadErrors != 0 {
		t.Errorf("stats: %+v %v", st.MountStats, err)
	} else if m, err := testenv.ParseMetrics(st.Metrics); err != nil {
		t.Errorf("exposition of the serving process: %v\n%s", err, st.Metrics)
	} else if v, _ := m.Value("clipd_fuse_read_duration_seconds", nil); m.Type("clipd_fuse_read_duration_seconds") != "histogram" || v != float64(st.Reads) {
		t.Errorf("read latency histogram: %s with %v reads, want %d:\n%s", m.Type("clipd_fuse_read_duration_seconds"), v, st.Reads, st.Metrics)
	}
	if err := c.setLogLevel(ctx, "debug"); err != nil {
		t.Errorf("set log level: %v", err)
	}
	if err := c.setLogLevel(ctx, "loud"); err == nil {
		t.Error("a bad log level was accepted")
	}

	// A busy mount refuses a graceful unmount, as EBUSY.
	f, err := os.Open(filepath.Join(mp, "etc/hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.unmount(ctx, false); !errors.Is(err, unix.EBUSY) {
		t.Errorf("busy unmount: %v, want EBUSY", err)
	}
	f.Close()

	waited := make(chan error, 1)
	go func() { waited <- newControlClient(control).wait(ctx) }()
	time.Sleep(20 * time.Millisecond)
	if err := c.unmount(ctx, false); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if err := <-waited; err != nil {
		t.Errorf("wait did not answer the clean end: %v", err)
	}
	select {
	case err := <-res:
		if err != nil {
			t.Errorf("ServeMount: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeMount did not return after the unmount")
	}
	if rec, ok := readExitRecord(control); !ok || rec.Reason != "unmounted" {
		t.Errorf("exit record: %+v %v", rec, ok)
	}
	if _, err := os.Stat(control); !os.IsNotExist(err) {
		t.Errorf("control socket left: %v", err)
	}
}

func TestServeMountReportsErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "clipd-serve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bad := filepath.Join(dir, "bad.clip")
	os.WriteFile(bad, []byte("not a clip file at all"), 0o644)
	o := ServeOptions{ID: "m2", Archive: bad, Mountpoint: dir, Control: filepath.Join(dir, "m2.sock"),
		Mounter: Config{CacheDir: filepath.Join(dir, "cache")}}
	msg, res := serveInProcess(t, context.Background(), o)
	if msg.OK || !msg.InvalidArchive || !strings.Contains(msg.Error, bad) || strings.HasPrefix(msg.Error, "invalid archive") {
		t.Errorf("report of a bad archive: %+v", msg)
	}
	if err := <-res; !errors.Is(err, daemon.ErrInvalidArchive) {
		t.Errorf("ServeMount: %v", err)
	}
}

// TestSpawnerAdoptChecks covers what Adopt decides without a process: a
// dead pid with an exit record is a clean end, without one a crash.
func TestSpawnerAdoptChecks(t *testing.T) {
	dir := t.TempDir()
	exe, _ := os.Executable()
	s, err := NewSpawner(SpawnConfig{Executable: exe, StateDir: dir, CacheDir: filepath.Join(dir, "cache"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dead := 1 << 22 // above pid_max's default: never a live process
	e := daemon.StateEntry{ID: "x", Mountpoint: "/m", PID: dead, Control: s.ControlSocket("x")}
	if _, err := s.Adopt(ctx, e); !errors.Is(err, daemon.ErrServingProcessGone) {
		t.Errorf("dead process: %v", err)
	}
	os.WriteFile(exitPath(e.Control), []byte(`{"reason":"unmounted","time":"2026-01-01T00:00:00Z"}`), 0o600)
	if _, err := s.Adopt(ctx, e); !errors.Is(err, daemon.ErrUnmounted) {
		t.Errorf("clean end: %v", err)
	}
	if _, err := os.Stat(exitPath(e.Control)); !os.IsNotExist(err) {
		t.Errorf("exit record not cleaned up: %v", err)
	}
	// A live process (this one) whose control socket does not answer is
	// not declared gone: its mount must not be detached.
	e.PID = os.Getpid()
	if _, err := s.Adopt(ctx, e); err == nil || errors.Is(err, daemon.ErrServingProcessGone) || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("unanswering live process: %v", err)
	}
	if _, err := NewSpawner(SpawnConfig{Executable: filepath.Join(dir, "nope"), StateDir: dir, CacheDir: dir}); err == nil {
		t.Error("a missing executable was accepted")
	}
}

func TestSpawnerReload(t *testing.T) {
	dir := t.TempDir()
	exe, _ := os.Executable()
	s, err := NewSpawner(SpawnConfig{Executable: exe, StateDir: dir, CacheDir: filepath.Join(dir, "cache"),
		CacheMaxSize: 1 << 30, MaxFetches: 8, LogLevel: "info", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Limits: LimitsOf(daemon.DefaultConfig()), RecordFor: 30 * time.Second, Replay: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := daemon.DefaultConfig()
	cfg.Daemon.SpareServingProcess = false // this test binary cannot serve
	cfg.Daemon.LogLevel = "info"
	cfg.Cache.MaxSize = 1 << 30
	cfg.Cache.MinFree = 0
	cfg.Registry.MaxFetches = 8
	if applied, restart := s.Reload(cfg); len(applied) != 0 || len(restart) != 0 {
		t.Errorf("unchanged config: applied %v, restart %v", applied, restart)
	}
	cfg.Cache.MaxSize = 2 << 30
	cfg.Registry.MaxFetches = 4
	cfg.Daemon.LogLevel = "debug"
	applied, restart := s.Reload(cfg)
	if strings.Join(applied, ",") != "daemon.log_level (serving processes),registry.max_fetches (new mounts),cache.max_size,cache.min_free" || len(restart) != 0 {
		t.Errorf("applied %v, restart %v", applied, restart)
	}
	if c := s.config(); c.MaxFetches != 4 || c.LogLevel != "debug" {
		t.Errorf("new mounts would not get the new settings: %+v", c)
	}
	cfg.Daemon.ServeOOMScoreAdj, cfg.Daemon.ServeMemoryLimit = 200, 512*daemon.MiB
	applied, _ = s.Reload(cfg)
	if strings.Join(applied, ",") != "daemon.serve_oom_score_adj (new mounts),daemon.serve_memory_limit (new mounts)" {
		t.Errorf("limits changed: applied %v", applied)
	}
	if l := s.config().Limits; l.OOMScoreAdj != 200 || l.Memory != 512<<20 {
		t.Errorf("new mounts would not get the new limits: %+v", l)
	}
	cfg.Prefetch.RecordSeconds, cfg.Prefetch.Replay = daemon.Duration(5*time.Second), false
	if applied, _ = s.Reload(cfg); strings.Join(applied, ",") != "prefetch (new mounts)" {
		t.Errorf("prefetch changed: applied %v", applied)
	}
	if c := s.config(); c.RecordFor != 5*time.Second || c.Replay {
		t.Errorf("new mounts would not get the new prefetch settings: %v %v", c.RecordFor, c.Replay)
	}
}
