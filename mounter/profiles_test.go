package mounter

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/profile"
	"golang.org/x/sys/unix"
)

// registryFixture pushes the two-layer fixture image to a real registry
// and indexes it from there with the smallest spans, so that data/big
// (layer 1) spans about ten of them. It returns the .clip, its archive and
// data/big's content.
func registryFixture(t *testing.T) (string, *index.Archive, []byte) {
	t.Helper()
	clip, big := fixture(t)
	host := testenv.StartRegistry(t)
	ref := host + "/fixture:v1"
	testenv.PushLayout(t, filepath.Join(filepath.Dir(clip), "layout"), "v1", ref)
	ctx := context.Background()
	img, src, err := fetcher.ResolveImage(ctx, ref, nil, fetcher.Options{})
	if err != nil {
		t.Fatalf("resolve %s: %v", ref, err)
	}
	a, err := index.Build(ctx, img, index.BuildOptions{Source: src, SpanSize: index.MinSpanSize})
	if err != nil {
		t.Fatalf("index %s: %v", ref, err)
	}
	out := filepath.Join(t.TempDir(), "registry.clip")
	if err := index.WriteFile(out, a); err != nil {
		t.Fatal(err)
	}
	if a, err = index.Open(out); err != nil {
		t.Fatal(err)
	}
	if !profile.ValidImage(a.Source.Manifest) || a.Layers[1].Spans == nil || len(a.Layers[1].Spans.Spans) < 8 {
		t.Fatalf("fixture: manifest %q, layer 1 index: %d spans", a.Source.Manifest, len(a.Layers[1].Spans.Spans))
	}
	return out, a, big
}

// nodeOf returns the node at path p of a.
func nodeOf(t *testing.T, a *index.Archive, p string) *index.Node {
	t.Helper()
	for _, n := range a.Nodes {
		if n.Path == p {
			return n
		}
	}
	t.Fatalf("%s not in the archive", p)
	return nil
}

// spanReader reads 4 KiB of a file inside given spans of its layer, with
// the kernel's read-ahead off, so that each read touches one span.
type spanReader struct {
	t   *testing.T
	a   *index.Archive
	n   *index.Node
	f   *os.File
	big []byte
}

func openSpanReader(t *testing.T, a *index.Archive, mp, p string, content []byte) *spanReader {
	f, err := os.Open(filepath.Join(mp, p))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	return &spanReader{t: t, a: a, n: nodeOf(t, a, "/"+p), f: f, big: content}
}

// read reads inside span i of the file's layer and checks the bytes.
func (r *spanReader) read(i int) {
	r.t.Helper()
	s := r.a.Layers[r.n.Layer].Spans.Spans[i]
	off := s.UOff + 64<<10 - r.n.Offset
	if off < 0 || off+4096 > int64(len(r.big)) {
		r.t.Fatalf("span %d is not inside %s", i, r.n.Path)
	}
	buf := make([]byte, 4096)
	if _, err := r.f.ReadAt(buf, off); err != nil || !bytes.Equal(buf, r.big[off:off+4096]) {
		r.t.Fatalf("read %s at %d (span %d): %v", r.n.Path, off, i, err)
	}
	// Touches are kept in milliseconds: distinct times keep the order
	// independent of the tie-break.
	time.Sleep(5 * time.Millisecond)
}

// A serving process records the spans its first reads touch, in order of
// first touch, and merges them into the image's profile at the end of its
// recording window; what it reads afterwards is not recorded.
func TestServeMountRecordsProfile(t *testing.T) {
	clip, a, big := registryFixture(t)
	dir, err := os.MkdirTemp("", "clipd-prof-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	profiles := filepath.Join(dir, "profiles")
	const window = 2 * time.Second
	o := ServeOptions{ID: "p1", Archive: clip, Mountpoint: mp, Control: filepath.Join(dir, "p1.sock"),
		Mounter: Config{CacheDir: filepath.Join(dir, "cache"), Profiles: ProfileOptions{Dir: profiles, RecordFor: window, Replay: true}}}
	msg, res := serveInProcess(t, context.Background(), o)
	defer unix.Unmount(mp, unix.MNT_DETACH)
	if !msg.OK {
		t.Fatalf("mount: %+v", msg)
	}
	mounted := time.Now()

	hello := nodeOf(t, a, "/etc/hello")
	if got, err := os.ReadFile(filepath.Join(mp, "etc/hello")); err != nil || string(got) != "hello from layer 1\n" {
		t.Fatalf("read etc/hello: %q %v", got, err)
	}
	time.Sleep(5 * time.Millisecond)
	r := openSpanReader(t, a, mp, "data/big", big)
	order := []int{6, 1, 7, 3}
	for _, i := range order {
		r.read(i)
	}
	if time.Since(mounted) > window-200*time.Millisecond {
		t.Fatalf("reads took %s, too close to the %s window to test it", time.Since(mounted), window)
	}

	st, err := profile.Open(profiles)
	if err != nil {
		t.Fatal(err)
	}
	key := a.Source.Manifest
	var p *profile.Profile
	for deadline := time.Now().Add(window + 10*time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p, err = st.Load(key); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no profile %s while the mount is live, %s after its window: %v", key, window, err)
		}
	}
	// After the window: not recorded.
	r.read(5)

	want := []profile.Ref{{Layer: 0, Span: a.Layers[0].Spans.Find(hello.Offset)}}
	for _, i := range order {
		want = append(want, profile.Ref{Layer: 1, Span: i})
	}
	plan, err := profile.Verify(p, key, a)
	if err != nil {
		t.Fatalf("the recorded profile does not verify against its own index: %v", err)
	}
	if !slices.Equal(plan, want) || p.Recordings != 1 {
		t.Fatalf("recorded plan %v (%d recordings), want %v, 1", plan, p.Recordings, want)
	}

	r.f.Close()
	if err := newControlClient(o.Control).unmount(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("ServeMount: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("ServeMount did not return after the unmount")
	}
	after, err := st.Load(key)
	if err != nil || after.Recordings != 1 || after.Spans() != len(want) {
		t.Fatalf("profile after the unmount: %+v %v; want the window's recording only", after, err)
	}

	// A mount with an empty cache replays the profile from the first read
	// of one of its spans: nothing is fetched before, its other spans
	// are fetched then, and the same reads then hit.
	m, err := New(Config{CacheDir: filepath.Join(dir, "cache2"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Profiles: ProfileOptions{Dir: profiles, Replay: true}})
	if err != nil {
		t.Fatal(err)
	}
	mp2 := filepath.Join(dir, "mnt2")
	os.Mkdir(mp2, 0o755)
	mt, err := m.Mount(context.Background(), daemon.MountRequest{Archive: clip, Mountpoint: mp2})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mp2, unix.MNT_DETACH)
	for deadline := time.Now().Add(10 * time.Second); mt.replayEnd.Load() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the replay was not armed")
		}
	}
	if s := mt.Stats(); s.PrefetchPlanned != 0 || s.BytesFetched != 0 {
		t.Fatalf("before any read: %+v, want nothing planned nor fetched", s)
	}
	if _, err := os.ReadFile(filepath.Join(mp2, "etc/hello")); err != nil {
		t.Fatal(err)
	}
	rest := int64(len(want) - 1) // etc/hello's span came with its read
	for deadline := time.Now().Add(10 * time.Second); mt.Stats().PrefetchFetched < rest; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("replay: %+v, want %d spans fetched", mt.Stats(), rest)
		}
	}
	r2 := openSpanReader(t, a, mp2, "data/big", big)
	for _, i := range order {
		r2.read(i)
	}
	r2.f.Close()
	// etc/hello's span is the one that started the replay: its demand
	// fetch and the replay's first job race for it (one fetch, whichever
	// leads counts it), so the replay fetched rest or rest+1 spans.
	if s := mt.Stats(); s.PrefetchPlanned != int64(len(want)) || s.PrefetchUsed < rest || s.PrefetchUsed > rest+1 ||
		s.PrefetchFetched != s.PrefetchUsed || s.PrefetchWasted != 0 || s.CacheMisses != 1 {
		t.Errorf("replayed mount: planned %d fetched %d used %d wasted %d, %d cache misses; want %d planned, %d or %d fetched and used, one miss",
			s.PrefetchPlanned, s.PrefetchFetched, s.PrefetchUsed, s.PrefetchWasted, s.CacheMisses, len(want), rest, rest+1)
	}
	if err := mt.Unmount(false); err != nil {
		t.Fatal(err)
	}
	waitDone(t, mt)
	if end := mt.replayEnd.Load(); end != fetcher.ReplayRan.String() {
		t.Errorf("replay ended %v, want %s", end, fetcher.ReplayRan)
	}

	// A workload that reads none of the profile's spans never starts
	// the replay: nothing but its own reads is fetched.
	mp3 := filepath.Join(dir, "mnt3")
	os.Mkdir(mp3, 0o755)
	m3, err := New(Config{CacheDir: filepath.Join(dir, "cache3"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Profiles: ProfileOptions{Dir: profiles, Replay: true}})
	if err != nil {
		t.Fatal(err)
	}
	mt3, err := m3.Mount(context.Background(), daemon.MountRequest{Archive: clip, Mountpoint: mp3})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mp3, unix.MNT_DETACH)
	r3 := openSpanReader(t, a, mp3, "data/big", big)
	for _, i := range []int{2, 4, 5} {
		r3.read(i)
	}
	r3.f.Close()
	if err := mt3.Unmount(false); err != nil {
		t.Fatal(err)
	}
	waitDone(t, mt3)
	if s := mt3.Stats(); s.PrefetchPlanned != 0 || s.PrefetchFetched != 0 || mt3.replayEnd.Load() != fetcher.ReplayWaiting.String() {
		t.Errorf("foreign workload: %+v, replay %v; want no prefetch, replay waiting", s, mt3.replayEnd.Load())
	}
}

// A profile the store holds under the image's name that does not fit it
// (corrupt, another image's) is refused with a warning naming the file,
// and the mount goes on without it.
func TestServeMountRefusesBadProfiles(t *testing.T) {
	clip, a, _ := registryFixture(t)
	key := a.Source.Manifest
	for _, c := range []struct{ name, content string }{
		{"corrupt", `{"version":1,"image":"` + key + `","layers":[{"digest":`},
		{"foreign", `{"version":1,"image":"sha256:` + string(bytes.Repeat([]byte("e"), 64)) + `","recordings":1,"updated":"2026-01-01T00:00:00Z","layers":[` +
			`{"digest":"` + a.Layers[1].Digest + `","span_size":262144,"span_count":3,"spans":[{"index":1,"at_ms":0,"seen":1,"last":1}]}]}`},
		{"other layers", `{"version":1,"image":"` + key + `","recordings":1,"updated":"2026-01-01T00:00:00Z","layers":[` +
			`{"digest":"sha256:` + string(bytes.Repeat([]byte("0"), 64)) + `","span_size":1048576,"span_count":4,"spans":[{"index":1,"at_ms":0,"seen":1,"last":1}]}]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "clipd-prof-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			profiles := filepath.Join(dir, "profiles")
			st, err := profile.Open(profiles)
			if err != nil {
				t.Fatal(err)
			}
			file, _ := st.Path(key)
			if err := os.WriteFile(file, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			mp := filepath.Join(dir, "mnt")
			os.Mkdir(mp, 0o755)
			logs := &testenv.SyncBuffer{}
			o := ServeOptions{ID: "p2", Archive: clip, Mountpoint: mp, Control: filepath.Join(dir, "p2.sock"),
				Mounter: Config{CacheDir: filepath.Join(dir, "cache"), Logger: slog.New(slog.NewTextHandler(logs, nil)),
					Profiles: ProfileOptions{Dir: profiles, Replay: true}}}
			msg, res := serveInProcess(t, context.Background(), o)
			defer unix.Unmount(mp, unix.MNT_DETACH)
			if !msg.OK {
				t.Fatalf("mount with a %s profile: %+v", c.name, msg)
			}
			waitLog(t, logs, "prefetch profile refused")
			if !bytes.Contains([]byte(logs.String()), []byte(file)) || !bytes.Contains([]byte(logs.String()), []byte("level=WARN")) {
				t.Errorf("the warning does not name %s:\n%s", file, logs)
			}
			if err := newControlClient(o.Control).unmount(context.Background(), false); err != nil {
				t.Fatal(err)
			}
			if err := <-res; err != nil {
				t.Fatalf("ServeMount: %v", err)
			}
			if bytes.Contains([]byte(logs.String()), []byte("prefetch profile armed")) {
				t.Errorf("a %s profile was replayed:\n%s", c.name, logs)
			}
		})
	}
}

func waitLog(t *testing.T, logs *testenv.SyncBuffer, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !bytes.Contains([]byte(logs.String()), []byte(s)); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", s, logs)
		}
	}
}
