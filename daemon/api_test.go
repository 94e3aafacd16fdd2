package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/sys/unix"
)

func TestMountLifecycle(t *testing.T) {
	h := newHarness(t).start()
	ctx := context.Background()
	mp := h.mp("a/b") // missing directories are created

	mi := h.mount(mp)
	if mi.ID == "" || mi.Mountpoint != mp || mi.Archive != h.archive {
		t.Fatalf("create answer: %+v", mi)
	}
	if img, _ := mi.Image.(map[string]any); img["archive"] != "image.clip" {
		t.Errorf("image summary not passed through: %#v", mi.Image)
	}
	if fi, err := os.Stat(mp); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Errorf("mountpoint not created 0755: %v %v", fi, err)
	}
	fm := h.fm.get(mp)
	if fm == nil || fm.req.Archive != h.archive {
		t.Fatalf("mounter not asked for %s: %+v", mp, h.fm.reqs)
	}

	list, err := h.client.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != mi.ID || list[0].Stats.BytesFetched != 4096 || list[0].Stats.Reads != 7 {
		t.Fatalf("list: %+v %v", list, err)
	}
	got, err := h.client.Get(ctx, mi.ID)
	if err != nil || got.Mountpoint != mp || got.Stats.CacheHits != 3 {
		t.Fatalf("get: %+v %v", got, err)
	}
	if st := h.state(); len(st) != 1 || st[0].ID != mi.ID || st[0].Mountpoint != mp || st[0].Archive != h.archive ||
		st[0].PID != os.Getpid() || st[0].Created.IsZero() {
		t.Fatalf("state file: %+v", st)
	}

	m, err := h.client.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := testenv.ParseMetrics(m)
	if err != nil {
		t.Fatalf("%v:\n%s", err, m)
	}
	mine := map[string]string{"id": mi.ID, "mountpoint": mp}
	for _, want := range []struct {
		name, kind string
		labels     map[string]string
		v          float64
	}{
		{"clipd_mounts", "gauge", nil, 1},
		{"clipd_mount_fetched_bytes_total", "counter", mine, 4096},
		{"clipd_mount_reads_total", "counter", mine, 7},
		{"clipd_mount_cache_hits_total", "counter", mine, 3},
		{"clipd_mount_up", "gauge", mine, 1},
		{"clipd_mount_info", "gauge", map[string]string{"id": mi.ID, "mountpoint": mp, "pid": strconv.Itoa(os.Getpid())}, 1},
		{"clipd_mount_request_duration_seconds", "histogram", map[string]string{"code": "201"}, 1},
	} {
		if v, ok := pm.Value(want.name, want.labels); !ok || v != want.v || pm.Type(want.name) != want.kind {
			t.Errorf("%s%v: %v (found %v), %s; want %v, %s", want.name, want.labels, v, ok, pm.Type(want.name), want.v, want.kind)
		}
	}
	for _, err := range pm.CheckConventions("clipd_") {
		t.Error(err)
	}
	if v, ok := pm.Value("go_goroutines", nil); !ok || v < 1 {
		t.Errorf("go_goroutines: %v %v", v, ok)
	}
	health, err := h.client.Health(ctx)
	if err != nil || health.Status != "ok" || health.Version == "" || health.Mounts != 1 {
		t.Errorf("health: %+v %v", health, err)
	}

	if _, err := h.client.Unmount(ctx, mi.ID, false); err != nil {
		t.Fatal(err)
	}
	if calls := fm.unmountCalls(); !slices.Equal(calls, []bool{false}) {
		t.Errorf("unmount calls %v", calls)
	}
	if list, _ := h.client.List(ctx); len(list) != 0 {
		t.Errorf("list after delete: %+v", list)
	}
	if st := h.state(); len(st) != 0 {
		t.Errorf("state after delete: %+v", st)
	}
	_, err = h.client.Get(ctx, mi.ID)
	wantAPIError(t, err, 404, api.CodeNotFound, mi.ID)

	// The directory can be mounted again, and force reaches the mounter.
	mi = h.mount(mp)
	if _, err := h.client.Unmount(ctx, mi.ID, true); err != nil {
		t.Fatal(err)
	}
	if calls := h.fm.get(mp).unmountCalls(); !slices.Equal(calls, []bool{true}) {
		t.Errorf("force unmount calls %v", calls)
	}
	if !strings.Contains(h.logs.String(), "method=POST path=/v1/mounts status=201") ||
		!strings.Contains(h.logs.String(), "peer_uid=0") {
		t.Errorf("API calls not logged:\n%s", h.logs)
	}
}

// rawCreate posts body as is and decodes the error envelope.
func rawCreate(t *testing.T, c *api.Client, body io.Reader) (int, api.Error) {
	t.Helper()
	resp, err := c.Raw(context.Background(), http.MethodPost, "/v1/mounts", body)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var eb struct {
		Error api.Error `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	return resp.StatusCode, eb.Error
}

func TestCreateErrors(t *testing.T) {
	h := newHarness(t)
	outside := filepath.Join(h.dir, "outside")
	for _, d := range []string{outside, h.root, filepath.Join(h.root, "full"), filepath.Join(h.root, "inner")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(h.root, "full", "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(h.root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(h.root, "inner"), filepath.Join(h.root, "ok-link")); err != nil {
		t.Fatal(err)
	}
	// A dangling link must not let MkdirAll create its target.
	if err := os.Symlink(filepath.Join(outside, "made"), filepath.Join(h.root, "dangling")); err != nil {
		t.Fatal(err)
	}
	h.start()
	busy := h.mount(h.mp("busy"))

	arch, _ := json.Marshal(h.archive)
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	body := func(mp string) string { return `{"archive":` + string(arch) + `,"mountpoint":` + q(mp) + `}` }
	cases := []struct {
		name   string
		body   string
		status int
		code   string
		msg    string
	}{
		{"malformed JSON", `{"archive": "/x",`, 400, api.CodeBadRequest, "malformed JSON"},
		{"not an object", `[1,2]`, 400, api.CodeBadRequest, "malformed JSON"},
		{"empty body", ``, 400, api.CodeBadRequest, "empty request body"},
		{"trailing data", body(h.mp("t")) + `{}`, 400, api.CodeBadRequest, "trailing data"},
		{"unknown field", `{"archive":` + string(arch) + `,"mountpoint":"/x","color":"red"}`, 400, api.CodeBadRequest, `unknown field "color"`},
		{"wrong type", `{"archive":1,"mountpoint":"/x"}`, 400, api.CodeBadRequest, "archive"},
		{"missing archive", `{"mountpoint":` + q(h.mp("m")) + `}`, 400, api.CodeBadRequest, `missing field "archive"`},
		{"missing mountpoint", `{"archive":` + string(arch) + `}`, 400, api.CodeBadRequest, `missing field "mountpoint"`},
		{"relative archive", `{"archive":"image.clip","mountpoint":` + q(h.mp("r")) + `}`, 400, api.CodeBadRequest, "absolute"},
		{"archive not found", `{"archive":"/nonexistent/x.clip","mountpoint":` + q(h.mp("n")) + `}`, 404, api.CodeNotFound, "archive /nonexistent/x.clip not found"},
		{"archive is a directory", `{"archive":` + q(h.dir) + `,"mountpoint":` + q(h.mp("d")) + `}`, 400, api.CodeBadRequest, "not a regular file"},
		{"relative mountpoint", body("mnt/x"), 400, api.CodeBadRequest, "absolute"},
		{"dotdot mountpoint", body(h.root + "/x/../y"), 400, api.CodeBadRequest, `without ".."`},
		{"unclean mountpoint", body(h.root + "//y/"), 400, api.CodeBadRequest, "clean"},
		{"outside roots", body(filepath.Join(outside, "x")), 403, api.CodeForbidden, "outside the mount roots"},
		{"the root itself", body(h.root), 403, api.CodeForbidden, "is a mount root itself"},
		{"root prefix trick", body(h.root + "x/y"), 403, api.CodeForbidden, "outside the mount roots"},
		{"symlink escape", body(filepath.Join(h.root, "escape", "x")), 403, api.CodeForbidden, "resolves to " + filepath.Join(outside, "x")},
		{"symlink is the mountpoint", body(filepath.Join(h.root, "escape")), 403, api.CodeForbidden, "resolves to " + outside},
		{"dangling symlink", body(filepath.Join(h.root, "dangling", "x")), 400, api.CodeBadRequest, "create mountpoint"},
		{"not empty", body(filepath.Join(h.root, "full")), 409, api.CodeConflict, "not empty"},
		{"already mounted here", body(busy.Mountpoint), 409, api.CodeConflict, "already mounted as " + busy.ID},
		{"mountpoint is a file", body(filepath.Join(h.root, "full", "f")), 400, api.CodeBadRequest, "not a directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, ae := rawCreate(t, h.client, strings.NewReader(c.body))
			if status != c.status || ae.Code != c.code || !strings.Contains(ae.Message, c.msg) {
				t.Errorf("got %d %s %q; want %d %s containing %q", status, ae.Code, ae.Message, c.status, c.code, c.msg)
			}
		})
	}
	for _, p := range []string{filepath.Join(outside, "x"), filepath.Join(outside, "made")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was created outside the roots: %v", p, err)
		}
	}

	t.Run("hostile huge body", func(t *testing.T) {
		huge := io.MultiReader(strings.NewReader(`{"archive":"`), io.LimitReader(neverEnding('a'), 8<<20), strings.NewReader(`"}`))
		status, ae := rawCreate(t, h.client, huge)
		if status != http.StatusRequestEntityTooLarge || ae.Code != api.CodeTooLarge {
			t.Errorf("got %d %+v", status, ae)
		}
	})

	t.Run("a real mount point is busy", func(t *testing.T) {
		mp := h.mp("tmpfs")
		if err := os.MkdirAll(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("clipdtest", mp, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatalf("mount tmpfs: %v", err)
		}
		defer unix.Unmount(mp, unix.MNT_DETACH)
		status, ae := rawCreate(t, h.client, strings.NewReader(body(mp)))
		if status != 409 || !strings.Contains(ae.Message, "already a mount point") {
			t.Errorf("got %d %+v", status, ae)
		}
	})

	t.Run("mount failure gives its cause", func(t *testing.T) {
		h.fm.mu.Lock()
		h.fm.fail = errors.New("open index: bad magic")
		h.fm.mu.Unlock()
		defer func() { h.fm.mu.Lock(); h.fm.fail = nil; h.fm.mu.Unlock() }()
		status, ae := rawCreate(t, h.client, strings.NewReader(body(h.mp("fails"))))
		if status != 500 || ae.Code != api.CodeMountFailed || !strings.Contains(ae.Message, "bad magic") {
			t.Errorf("got %d %+v", status, ae)
		}
	})

	t.Run("a symlink inside the roots is followed", func(t *testing.T) {
		mi := h.mount(filepath.Join(h.root, "ok-link", "x"))
		if mi.Mountpoint != filepath.Join(h.root, "inner", "x") {
			t.Errorf("mountpoint %s", mi.Mountpoint)
		}
	})

	// Still serving, and nothing half-made is left in the table.
	list, err := h.client.List(context.Background())
	if err != nil || len(list) != 2 {
		t.Fatalf("list after errors: %+v %v", list, err)
	}
	h.mount(h.mp("after"))
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func TestOtherErrors(t *testing.T) {
	h := newHarness(t).start()
	ctx := context.Background()
	_, err := h.client.Get(ctx, "nope")
	wantAPIError(t, err, 404, api.CodeNotFound, `no mount with id "nope"`)
	_, err = h.client.Unmount(ctx, "nope", false)
	wantAPIError(t, err, 404, api.CodeNotFound, "nope")
	err = h.client.Do(ctx, http.MethodPut, "/v1/mounts", nil, nil)
	wantAPIError(t, err, 405, api.CodeMethod, "method not allowed")
	err = h.client.Do(ctx, http.MethodGet, "/v2/things", nil, nil)
	wantAPIError(t, err, 404, api.CodeNotFound, "no such endpoint")

	h.fm.busy = true
	mi := h.mount(h.mp("busy"))
	err = h.client.Do(ctx, http.MethodDelete, "/v1/mounts/"+mi.ID+"?force=maybe", nil, nil)
	wantAPIError(t, err, 400, api.CodeBadRequest, "force")
	_, err = h.client.Unmount(ctx, mi.ID, false)
	wantAPIError(t, err, 409, api.CodeConflict, "busy")
	if list, _ := h.client.List(ctx); len(list) != 1 {
		t.Fatalf("busy mount dropped from the table: %+v", list)
	}
	if _, err := h.client.Unmount(ctx, mi.ID, true); err != nil {
		t.Fatalf("force unmount: %v", err)
	}
	if list, _ := h.client.List(ctx); len(list) != 0 {
		t.Fatalf("list: %+v", list)
	}
}

func TestConcurrentMountsOfOneMountpoint(t *testing.T) {
	h := newHarness(t)
	h.fm.delay = 200 * 1e6 // 200ms: both requests overlap
	h.start()
	mp := h.mp("race")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.client.Mount(context.Background(), api.CreateMount{Archive: h.archive, Mountpoint: mp})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
			continue
		}
		wantAPIError(t, err, 409, api.CodeConflict, "busy")
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent mounts succeeded: %v", ok, len(errs), errs)
	}
}

func TestFilesystemGoingAwayIsDropped(t *testing.T) {
	h := newHarness(t).start()
	mi := h.mount(h.mp("vanish"))
	keep := h.mount(h.mp("keep"))
	h.fm.get(mi.Mountpoint).vanish()
	waitFor(t, "the vanished mount to leave the table", func() bool {
		list, err := h.client.List(context.Background())
		return err == nil && len(list) == 1 && list[0].ID == keep.ID
	})
	waitFor(t, "the state file to follow", func() bool {
		st := h.state()
		return len(st) == 1 && st[0].ID == keep.ID
	})
	if !strings.Contains(h.logs.String(), "went away by itself") {
		t.Errorf("no log line:\n%s", h.logs)
	}
}
