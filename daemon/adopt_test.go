package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
)

// survivingMounter hands out mounts that outlive the daemon, and adopts
// them from the table as adopt says.
type survivingMounter struct {
	*fakeMounter
	adopt func(StateEntry) (Mounted, error)
}

func (s survivingMounter) Mount(ctx context.Context, req MountRequest) (Mounted, error) {
	m, err := s.fakeMounter.Mount(ctx, req)
	if err != nil {
		return nil, err
	}
	return &fakeSurvivor{fakeMounted: m.(*fakeMounted), pid: 4242, control: "/ctl/" + req.ID + ".sock"}, nil
}

func (s survivingMounter) Adopt(_ context.Context, e StateEntry) (Mounted, error) { return s.adopt(e) }

type fakeSurvivor struct {
	*fakeMounted
	pid     int
	control string

	smu      sync.Mutex
	released bool
	err      error
}

func (f *fakeSurvivor) Process() ServingProcess {
	return ServingProcess{PID: f.pid, Control: f.control, Version: "v-old"}
}

func (f *fakeSurvivor) Release() {
	f.smu.Lock()
	f.released = true
	f.smu.Unlock()
}

func (f *fakeSurvivor) Err() error {
	f.smu.Lock()
	defer f.smu.Unlock()
	return f.err
}

// crash is what the death of the serving process looks like.
func (f *fakeSurvivor) crash(err error) {
	f.smu.Lock()
	f.err = err
	f.smu.Unlock()
	f.vanish()
}

type recordingNotifier struct {
	mu   sync.Mutex
	msgs []string
}

func (n *recordingNotifier) add(s string) {
	n.mu.Lock()
	n.msgs = append(n.msgs, s)
	n.mu.Unlock()
}
func (n *recordingNotifier) Ready(s string)  { n.add("READY " + s) }
func (n *recordingNotifier) Status(s string) { n.add("STATUS " + s) }
func (n *recordingNotifier) Stopping()       { n.add("STOPPING") }
func (n *recordingNotifier) all() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.msgs, "\n")
}

// TestShutdownUnmountsSurvivors: without KeepMounts, shutdown unmounts even
// the mounts that could outlive the daemon, and the table ends empty.
func TestShutdownUnmountsSurvivors(t *testing.T) {
	h := newHarness(t)
	var made []*fakeSurvivor
	var mu sync.Mutex
	sm := survivingMounter{fakeMounter: h.fm}
	srv := newServerKeep(t, h, survivingMounterRecording(sm, &made, &mu), nil, false)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	waitUpT(t, h)
	h.mount(h.mp("a"))
	h.mount(h.mp("b"))
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(made) != 2 {
		t.Fatalf("%d mounts made, want 2", len(made))
	}
	for _, s := range made {
		if s.released || len(s.unmountCalls()) == 0 {
			t.Errorf("%s: released %v, unmount calls %v; want unmounted", s.req.Mountpoint, s.released, s.unmountCalls())
		}
	}
	if st := h.state(); len(st) != 0 {
		t.Errorf("table after shutdown: %+v, want empty", st)
	}
}

// TestSurvivorsOutliveShutdownAndAreAdopted: at shutdown with KeepMounts,
// mounts served by their own processes are released, not unmounted, and stay
// in the table;
// the next daemon adopts the live ones, reports the dead ones failed and
// drops those unmounted meanwhile.
func TestSurvivorsOutliveShutdownAndAreAdopted(t *testing.T) {
	h := newHarness(t)
	var made []*fakeSurvivor
	var mu sync.Mutex
	sm := survivingMounter{fakeMounter: h.fm}
	srv1 := newServerT(t, h, survivingMounterRecording(sm, &made, &mu), nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv1.Serve(ctx) }()
	waitUpT(t, h)
	live, gone, unmounted, hung := h.mount(h.mp("live")), h.mount(h.mp("gone")), h.mount(h.mp("unmounted")), h.mount(h.mp("hung"))
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, s := range made {
		if !s.released || len(s.unmountCalls()) != 0 {
			t.Errorf("%s: released %v, unmount calls %v; want released, never unmounted", s.req.Mountpoint, s.released, s.unmountCalls())
		}
	}
	mu.Unlock()
	st := h.state()
	if len(st) != 4 || st[0].PID != 4242 || st[0].Control != "/ctl/"+live.ID+".sock" || st[0].Version != "v-old" {
		t.Fatalf("table after shutdown: %+v", st)
	}

	// The "live" mountpoint must look like a FUSE mount to be adopted.
	deadFUSEMount(t, live.Mountpoint)
	deadFUSEMount(t, gone.Mountpoint)
	adopted := &fakeSurvivor{fakeMounted: &fakeMounted{done: make(chan struct{}), stats: api.MountStats{Reads: 99}}, pid: 4242, control: st[0].Control}
	sm2 := survivingMounter{fakeMounter: &fakeMounter{}, adopt: func(e StateEntry) (Mounted, error) {
		switch e.ID {
		case live.ID:
			return adopted, nil
		case gone.ID:
			return nil, ErrServingProcessGone
		case unmounted.ID:
			return nil, ErrUnmounted
		}
		return nil, errors.New("control socket does not answer")
	}}
	notes := &recordingNotifier{}
	srv2 := newServerT(t, h, sm2, notes)
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc2 := make(chan error, 1)
	go func() { errc2 <- srv2.Serve(ctx2) }()
	waitUpT(t, h)
	list, err := h.client.List(context.Background())
	if err != nil || len(list) != 3 {
		t.Fatalf("list after restart: %+v %v", list, err)
	}
	byID := map[string]api.MountInfo{}
	for _, m := range list {
		byID[m.ID] = m
	}
	if m := byID[live.ID]; m.State != api.MountActive || m.Stats.Reads != 99 || m.PID != 4242 || m.Version != "v-old" {
		t.Errorf("adopted mount: %+v", m)
	}
	if m := byID[gone.ID]; m.State != api.MountFailed || !strings.Contains(m.Error, "gone") {
		t.Errorf("dead serving process: %+v", m)
	}
	if m := byID[hung.ID]; m.State != api.MountFailed || !strings.Contains(m.Error, "does not answer") {
		t.Errorf("unanswering serving process: %+v", m)
	}
	if _, mounted, _ := findMount(gone.Mountpoint); mounted {
		t.Errorf("dead FUSE mount of a gone process not detached")
	}
	if _, mounted, _ := findMount(live.Mountpoint); !mounted {
		t.Errorf("adopted mount detached")
	}
	// READY follows the socket's first answers: the harness may see the
	// daemon serve before it is sent.
	waitFor(t, "READY", func() bool { return strings.Contains(notes.all(), "READY serving 1 mounts (2 failed)") })
	if !strings.HasPrefix(notes.all(), "STATUS ") {
		t.Errorf("notifications:\n%s", notes.all())
	}

	// A serving process dying later fails its mount alone, and says so.
	adopted.crash(errors.New("serving process pid 4242 died: signal: killed"))
	waitFor(t, "the crashed mount to be failed", func() bool {
		m, err := h.client.Get(context.Background(), live.ID)
		return err == nil && m.State == api.MountFailed
	})
	m, _ := h.client.Get(context.Background(), live.ID)
	if m.Stats.Reads != 99 || !strings.Contains(m.Error, "signal: killed") {
		t.Errorf("failed mount keeps last figures and cause: %+v", m)
	}
	metrics, _ := h.client.Metrics(context.Background())
	for _, want := range []string{"clipd_serving_process_failures_total 3", "clipd_mounts_failed 3",
		`clipd_mount_up{id="` + live.ID + `",mountpoint="` + live.Mountpoint + `"} 0`,
		`clipd_mount_info{id="` + live.ID + `",mountpoint="` + live.Mountpoint + `",pid="4242",version="v-old"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
	}
	// The log line follows the state change; give it a moment.
	waitFor(t, "the crash to be logged", func() bool {
		return strings.Contains(h.logs.String(), "serving process failed; mount is failed")
	})
	// Deleting failed mounts frees them.
	for _, id := range []string{live.ID, gone.ID, hung.ID} {
		if _, err := h.client.Unmount(context.Background(), id, false); err != nil {
			t.Errorf("delete failed mount %s: %v", id, err)
		}
	}
	cancel2()
	if err := <-errc2; err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(notes.all(), "STOPPING\nSTATUS serving 0 mounts") {
		t.Errorf("notifications at stop:\n%s", notes.all())
	}
}

func survivingMounterRecording(sm survivingMounter, made *[]*fakeSurvivor, mu *sync.Mutex) Mounter {
	return recordingSurvivors{sm, made, mu}
}

type recordingSurvivors struct {
	survivingMounter
	made *[]*fakeSurvivor
	mu   *sync.Mutex
}

func (r recordingSurvivors) Mount(ctx context.Context, req MountRequest) (Mounted, error) {
	m, err := r.survivingMounter.Mount(ctx, req)
	if err == nil {
		r.mu.Lock()
		*r.made = append(*r.made, m.(*fakeSurvivor))
		r.mu.Unlock()
	}
	return m, err
}

func newServerT(t *testing.T, h *harness, m Mounter, n Notifier) *Server {
	t.Helper()
	var nn Notifier
	if n != nil {
		nn = n
	}
	return newServerKeep(t, h, m, nn, true)
}

// newServerKeep is newServerT with the choice of KeepMounts (clipd serve
// --keep-mounts, as clipd.service runs it).
func newServerKeep(t *testing.T, h *harness, m Mounter, n Notifier, keep bool) *Server {
	t.Helper()
	srv, err := NewServer(Options{Config: h.cfg, Mounter: m, Notifier: n, UnmountTimeout: 500 * time.Millisecond, KeepMounts: keep,
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func waitUpT(t *testing.T, h *harness) {
	t.Helper()
	h.client = api.NewClient(h.cfg.Daemon.Socket)
	waitFor(t, "the daemon to answer", func() bool {
		_, err := h.client.Health(context.Background())
		return err == nil
	})
}

func TestReload(t *testing.T) {
	h := newHarness(t)
	var lv slog.LevelVar
	h.fm.restart = []string{"registry.max_fetches"} // as the Spawner would answer
	srv, err := NewServer(Options{Config: h.cfg, Mounter: h.fm, LogLevel: &lv,
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: &lv}))})
	if err != nil {
		t.Fatal(err)
	}
	cfg := h.cfg
	cfg.Daemon.LogLevel = "debug"
	cfg.Daemon.AllowedUIDs = []uint32{1000}
	cfg.Daemon.Socket = "/elsewhere/clipd.sock"
	cfg.Registry.MaxFetches = 3
	newRoot := h.dir + "/mnt2"
	cfg.Daemon.MountRoots = []string{h.root, newRoot}
	applied, restart, err := srv.Reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if lv.Level() != slog.LevelDebug {
		t.Errorf("log level not applied: %v", lv.Level())
	}
	if strings.Join(applied, ",") != "daemon.log_level,daemon.allowed_uids,daemon.mount_roots" ||
		strings.Join(restart, ",") != "daemon.socket,registry.max_fetches" {
		t.Errorf("applied %v, restart %v", applied, restart)
	}
	if got := srv.config(); got.Daemon.Socket != h.cfg.Daemon.Socket || len(got.Daemon.MountRoots) != 2 {
		t.Errorf("config after reload: %+v", got.Daemon)
	}
	if _, err := os.Stat(newRoot); err != nil {
		t.Errorf("new mount root not created: %v", err)
	}
	if !strings.Contains(h.logs.String(), `msg="configuration changes need a restart" keys="[daemon.socket registry.max_fetches]"`) {
		t.Errorf("restart keys not logged:\n%s", h.logs)
	}
	cfg.Daemon.LogLevel = "loud"
	if _, _, err := srv.Reload(cfg); err == nil || lv.Level() != slog.LevelDebug {
		t.Errorf("invalid config: %v, level %v", err, lv.Level())
	}
}
