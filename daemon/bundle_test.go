package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// tmpfsMounter mounts a tmpfs holding a small image tree on the directory
// the daemon opened: real enough for a bundle, which reads the image's
// /etc/passwd through the mount.
type tmpfsMounter struct {
	*fakeMounter
	image map[string]any
}

type tmpfsMounted struct {
	*fakeMounted
	image map[string]any
}

func (t *tmpfsMounter) Mount(ctx context.Context, req MountRequest) (Mounted, error) {
	target := fmt.Sprintf("/proc/self/fd/%d", req.Dir.Fd())
	if err := unix.Mount("tmpfs", target, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode=0755"); err != nil {
		return nil, fmt.Errorf("mount tmpfs on %s: %w", req.Mountpoint, err)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nvideo:x:44:app\n",
	}
	for name, body := range files {
		p := filepath.Join(req.Mountpoint, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	m, err := t.fakeMounter.Mount(ctx, req)
	if err != nil {
		unix.Unmount(req.Mountpoint, unix.MNT_DETACH)
		return nil, err
	}
	return &tmpfsMounted{fakeMounted: m.(*fakeMounted), image: t.image}, nil
}

func (m *tmpfsMounted) Unmount(ctx context.Context, force bool) error {
	if err := unix.Unmount(m.req.Mountpoint, unix.MNT_DETACH); err != nil {
		return err
	}
	return m.fakeMounted.Unmount(ctx, force)
}

func (m *tmpfsMounted) Image() any { return m.image }

// Process names a control socket: the mount is served outside the daemon,
// so a restarted daemon tries to adopt it.
func (m *tmpfsMounted) Process() ServingProcess {
	return ServingProcess{PID: os.Getpid(), Control: "/ctl/" + m.req.ID + ".sock"}
}

func startBundleHarness(t *testing.T, image map[string]any) *harness {
	h := newHarness(t)
	serveWith(t, h, Options{Mounter: &tmpfsMounter{fakeMounter: h.fm, image: image}})
	return h
}

// serveWith starts a daemon on h's config with opts' Mounter and KeepMounts.
func serveWith(t *testing.T, h *harness, opts Options) {
	opts.Config, opts.UnmountTimeout = h.cfg, 500*time.Millisecond
	opts.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.errc = cancel, make(chan error, 1)
	go func() { h.errc <- srv.Serve(ctx) }()
	h.client = api.NewClient(h.cfg.Daemon.Socket)
	waitFor(t, "the daemon to answer", func() bool {
		_, err := h.client.Health(context.Background())
		return err == nil
	})
	t.Cleanup(func() { h.stop() })
}

func readSpec(t *testing.T, p string) specs.Spec {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return s
}

// TestBundleLifecycle: umoci's layout (bundle dir with the rootfs inside)
// is created, written for the image's config and removed with the mount.
func TestBundleLifecycle(t *testing.T) {
	h := startBundleHarness(t, map[string]any{"format": 2, "cmd": []string{"python3"},
		"entrypoint": []string{"/init"}, "env": []string{"LANG=C"}, "working_dir": "/srv", "user": "app"})
	bdir := h.mp("c1")
	rootfs := filepath.Join(bdir, "rootfs")
	mi, err := h.client.Mount(context.Background(), api.CreateMount{Archive: h.archive, Mountpoint: rootfs, Bundle: bdir})
	if err != nil {
		t.Fatalf("mount with bundle: %v\n%s", err, h.logs)
	}
	if mi.Bundle != bdir {
		t.Errorf("answer bundle %q, want %q", mi.Bundle, bdir)
	}
	if c := mi.ImageConfig; c == nil || !slices.Equal(c.Cmd, []string{"python3"}) || c.User != "app" || c.WorkingDir != "/srv" {
		t.Errorf("answer image_config %+v, want the image's cmd, user and working_dir", c)
	}
	cfg := filepath.Join(bdir, "config.json")
	fi, err := os.Lstat(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Errorf("config.json mode %v, want -rw-------", fi.Mode())
	}
	s := readSpec(t, cfg)
	if s.Root.Path != rootfs || !s.Root.Readonly {
		t.Errorf("root %+v, want path %s read-only", s.Root, rootfs)
	}
	if !slices.Equal(s.Process.Args, []string{"/init", "python3"}) || s.Process.Cwd != "/srv" {
		t.Errorf("args %q cwd %q", s.Process.Args, s.Process.Cwd)
	}
	if u := s.Process.User; u.UID != 1000 || u.GID != 1000 || !slices.Equal(u.AdditionalGids, []uint32{44}) {
		t.Errorf("user %+v, want 1000:1000 with group 44 (from the image's /etc/passwd and /etc/group)", u)
	}
	got, err := h.client.Get(context.Background(), mi.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Bundle != bdir || got.ImageConfig == nil || !slices.Equal(got.ImageConfig.Entrypoint, []string{"/init"}) {
		t.Errorf("GET: bundle %q image_config %+v", got.Bundle, got.ImageConfig)
	}
	if st := h.state(); len(st) != 1 || st[0].Bundle == nil || st[0].Bundle.Path != bdir {
		t.Errorf("mount table does not record the bundle: %+v", st)
	}

	if _, err := h.client.Unmount(context.Background(), mi.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(bdir); !os.IsNotExist(err) {
		t.Errorf("bundle directory clipd created is still there after DELETE: %v", err)
	}
}

// TestBundleInExistingDir: a directory the user made keeps existing (and
// keeps its other files); only config.json goes.
func TestBundleInExistingDir(t *testing.T) {
	h := startBundleHarness(t, map[string]any{"cmd": []string{"sh"}})
	bdir := h.mp("mine")
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bdir, "notes"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	mi, err := h.client.Mount(context.Background(), api.CreateMount{Archive: h.archive, Mountpoint: h.mp("r"), Bundle: bdir})
	if err != nil {
		t.Fatal(err)
	}
	if s := readSpec(t, filepath.Join(bdir, "config.json")); s.Process.User.UID != 0 || s.Root.Path != h.mp("r") {
		t.Errorf("user %+v root %+v", s.Process.User, s.Root)
	}
	if _, err := h.client.Unmount(context.Background(), mi.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(bdir, "config.json")); !os.IsNotExist(err) {
		t.Errorf("config.json left after DELETE: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(bdir, "notes")); err != nil {
		t.Errorf("the user's file in the bundle directory: %v", err)
	}
}

func TestBundleErrors(t *testing.T) {
	h := startBundleHarness(t, map[string]any{"cmd": []string{"sh"}, "user": "nobody"})
	outside := t.TempDir()
	if err := os.MkdirAll(h.root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, h.mp("link")); err != nil {
		t.Fatal(err)
	}
	taken := h.mp("taken")
	if err := os.MkdirAll(taken, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(taken, "config.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		name, mp, bundle string
		status           int
		msg              string
	}{
		{"relative", h.mp("a"), "rel/dir", http.StatusBadRequest, "must be an absolute path"},
		{"outside roots", h.mp("b"), outside, http.StatusForbidden, "outside the mount roots"},
		{"through a symlink", h.mp("c"), filepath.Join(h.mp("link"), "b"), http.StatusForbidden, "outside the mount roots"},
		{"the mountpoint", h.mp("d"), h.mp("d"), http.StatusBadRequest, "is the mountpoint"},
		{"inside the mountpoint", h.mp("e"), h.mp("e/b"), http.StatusBadRequest, "inside the mountpoint"},
		{"config.json exists", h.mp("f"), taken, http.StatusConflict, "already holds config.json"},
		// The image's user is unknown to its /etc/passwd: the mount is
		// taken back and the error says why.
		{"unknown user", h.mp("g"), h.mp("gb"), http.StatusUnprocessableEntity, `resolve image user "nobody"`},
	} {
		_, err := h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: c.mp, Bundle: c.bundle})
		t.Run(c.name, func(t *testing.T) { wantAPIError(t, err, c.status, "", c.msg) })
	}
	if list, err := h.client.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("mounts left after failed requests: %v %v", list, err)
	}
	for _, p := range []string{h.mp("g"), h.mp("gb"), h.mp("d"), h.mp("e")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind by a failed request: %v", p, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("something was created outside the mount roots: %v", entries)
	}
	if mi := findMountinfo(t, h.mp("g")); mi {
		t.Errorf("%s is still mounted after a failed bundle", h.mp("g"))
	}
}

func findMountinfo(t *testing.T, p string) bool {
	t.Helper()
	_, ok, err := findMount(p)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestBundleRemovedWithoutDelete: a mount that ends otherwise than by
// DELETE (daemon shutdown, an umount from a shell) takes its bundle along.
func TestBundleRemovedWithoutDelete(t *testing.T) {
	h := startBundleHarness(t, map[string]any{"cmd": []string{"sh"}})
	ctx := context.Background()

	gone := h.mp("gone")
	if _, err := h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: h.mp("r1"), Bundle: gone}); err != nil {
		t.Fatal(err)
	}
	// The filesystem goes away by itself: its watcher drops the entry.
	if err := unix.Unmount(h.mp("r1"), unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	h.fm.get(h.mp("r1")).vanish()
	waitFor(t, "the bundle of a vanished mount to go", func() bool {
		_, err := os.Lstat(gone)
		return os.IsNotExist(err)
	})

	atStop := h.mp("stop")
	if _, err := h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: filepath.Join(atStop, "rootfs"), Bundle: atStop}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(atStop, "config.json")); err != nil {
		t.Fatal(err)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(atStop); !os.IsNotExist(err) {
		t.Errorf("bundle %s left after the daemon unmounted everything at shutdown: %v", atStop, err)
	}
}

// TestBundleAcrossRestart: the mount table records the bundle, so the next
// daemon removes it when it finds the mount gone.
func TestBundleAcrossRestart(t *testing.T) {
	h := newHarness(t)
	serveWith(t, h, Options{Mounter: &tmpfsMounter{fakeMounter: h.fm, image: map[string]any{"cmd": []string{"sh"}}}, KeepMounts: true})
	bdir, rootfs := h.mp("c"), h.mp("c/rootfs")
	if _, err := h.client.Mount(context.Background(), api.CreateMount{Archive: h.archive, Mountpoint: rootfs, Bundle: bdir}); err != nil {
		t.Fatal(err)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if st := h.state(); len(st) != 1 || st[0].Bundle == nil || st[0].Bundle.Path != bdir || len(st[0].Bundle.Created) != 1 {
		t.Fatalf("mount table after a stop keeping mounts: %+v", st)
	}
	if _, err := os.Lstat(filepath.Join(bdir, "config.json")); err != nil {
		t.Fatalf("bundle of a mount kept running: %v", err)
	}
	// Unmounted while no daemon ran.
	if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	gone := survivingMounter{fakeMounter: h.fm, adopt: func(StateEntry) (Mounted, error) { return nil, ErrUnmounted }}
	serveWith(t, h, Options{Mounter: gone})
	waitFor(t, "the next daemon to remove the bundle", func() bool {
		_, err := os.Lstat(bdir)
		return os.IsNotExist(err)
	})
}
