package main

import (
	"archive/tar"
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// bigImage is a one-layer image for this machine's platform whose layer is
// about size bytes of incompressible data.
func bigImage(t *testing.T, size int) (v1.Image, v1.Layer) {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "blob", Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	return oneLayerImage(t, buf.Bytes())
}

// TestIndexChecksBeforeDownload: what can fail without the image fails
// before a layer is downloaded (the proxy in front of the registry sees no
// request, or none for the layer), and leaves no file behind.
func TestIndexChecksBeforeDownload(t *testing.T) {
	img, layer := bigImage(t, 64<<10)
	reg := testenv.StartRegistry(t)
	proxy := testenv.StartCountingProxy(t, reg)
	ref := proxy.Addr + "/test/img:v1"
	r, err := name.ParseReference(reg + "/test/img:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	ld, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	ro := filepath.Join(work, "ro")
	if err := os.Mkdir(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	other := "linux/arm64"
	if fetcher.DefaultPlatform().Architecture == "arm64" {
		other = "linux/amd64"
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		want   string
		noReqs bool // no request at all, else none for the layer
	}{
		{"missing dir", []string{"index", ref, "-o", "/no/such/dir/x.clip"}, exitNotFound,
			"index: cannot write /no/such/dir/x.clip: no such file or directory", true},
		{"output is a directory", []string{"index", ref, "-o", work}, exitFailure, "is a directory", true},
		{"bad source", []string{"index", proxy.Addr + "/Test/IMG:v1", "-o", filepath.Join(work, "x.clip")}, exitUsage, "source", true},
		{"platform", []string{"index", ref, "-o", filepath.Join(work, "x.clip"), "--platform", other}, exitFailure,
			"no manifest for platform " + other + " (has: " + fetcher.DefaultPlatform().String() + ")", false},
	}
	if os.Geteuid() != 0 { // root writes anywhere
		cases = append(cases, struct {
			name   string
			args   []string
			code   int
			want   string
			noReqs bool
		}{"read-only dir", []string{"index", ref, "-o", filepath.Join(ro, "x.clip")}, exitForbidden, "permission denied", true})
	}
	for _, c := range cases {
		proxy.Reset()
		code, out, errs := clipd(t, c.args...)
		if code != c.code || out != "" || !strings.Contains(errs, c.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: status %d, stdout %q, stderr %q; want %d and %q", c.name, code, out, errs, c.code, c.want)
		}
		if c.noReqs && proxy.Requests() != 0 {
			t.Errorf("%s: %d registry requests before failing, want none", c.name, proxy.Requests())
		}
		if got := proxy.Blob(ld.String()); len(got) != 0 {
			t.Errorf("%s: layer requested before failing: %+v", c.name, got)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(work, "*")); len(left) != 1 { // ro
		t.Errorf("files left in the output directory: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(work, ".*")); len(left) != 0 {
		t.Errorf("temporary files left in the output directory: %v", left)
	}

	// The same image and directory index fine, through the temporary file.
	proxy.Reset()
	out := filepath.Join(work, "x.clip")
	if code, _, errs := clipd(t, "index", ref, "-o", out); code != 0 {
		t.Fatalf("index: %d %s", code, errs)
	}
	if len(proxy.Blob(ld.String())) == 0 {
		t.Error("the layer was not fetched through the proxy")
	}
	if a, err := index.Open(out); err != nil || len(a.Layers) != 1 {
		t.Fatalf("written archive: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(work, ".*")); len(left) != 0 {
		t.Errorf("temporary files left after indexing: %v", left)
	}
}

// fakeClock advances by step on every reading.
type fakeClock struct {
	t    time.Time
	step time.Duration
}

func (c *fakeClock) now() time.Time {
	c.t = c.t.Add(c.step)
	return c.t
}

// TestByteProgressThrottled: on a pipe, at most one line per interval, and
// the line says the layer, its digest and the bytes so far of the total.
func TestByteProgressThrottled(t *testing.T) {
	var buf bytes.Buffer
	clock := &fakeClock{t: time.Unix(0, 0), step: 300 * time.Millisecond}
	p := &byteProgress{w: &buf, interval: time.Second, now: clock.now}
	p.start(2, 3, "sha256:ab12cd34ef56ab12cd34ef56", 51_000_000)
	for range 10 { // 1.23 MB reads 0.3 s apart: lines after 1.2 s and 2.4 s
		p.add(1_230_000)
	}
	want := "layer 2/3 sha256:ab12cd34ef56 4.9/51.0 MB\n" +
		"layer 2/3 sha256:ab12cd34ef56 9.8/51.0 MB\n"
	if buf.String() != want {
		t.Errorf("progress lines:\n%s\nwant:\n%s", buf.String(), want)
	}

	// On a terminal: one line rewritten in place, ended before the next
	// ordinary line.
	buf.Reset()
	p = &byteProgress{w: &buf, terminal: true, interval: 200 * time.Millisecond, now: clock.now}
	p.start(1, 1, "sha256:00", 2_000_000)
	p.add(1_000_000)
	p.add(1_000_000)
	p.println("layer 1/1 sha256:00: 3 entries")
	want = "\r\033[Klayer 1/1 sha256:00 1.0/2.0 MB\r\033[Klayer 1/1 sha256:00 2.0/2.0 MB\r\033[Klayer 1/1 sha256:00: 3 entries\n"
	if buf.String() != want {
		t.Errorf("terminal progress %q, want %q", buf.String(), want)
	}
}

// TestIndexByteProgress: clipd index counts the bytes it reads of each
// layer; with a clock that is always a second further, the last progress
// line of the layer shows all of it read.
func TestIndexByteProgress(t *testing.T) {
	img, layer := bigImage(t, 3<<20)
	size, err := layer.Size()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	clock := &fakeClock{t: time.Unix(0, 0), step: time.Second}
	p := &byteProgress{w: &buf, interval: time.Second, now: clock.now}
	_, err = index.Build(context.Background(), progressImage{Image: img, p: p}, index.BuildOptions{Progress: func(ip index.Progress) {
		if !ip.Done {
			p.start(ip.Layer, ip.Layers, ip.Digest, layerSize(img, ip.Layer-1))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	line := regexp.MustCompile(`^layer 1/1 sha256:[0-9a-f]{12} [0-9.]+/[0-9.]+ MB$`)
	for _, l := range lines {
		if !line.MatchString(l) {
			t.Fatalf("progress line %q", l)
		}
	}
	total := megabytes(size, size)
	if len(lines) < 3 || !strings.HasSuffix(lines[len(lines)-1], " "+total) {
		t.Errorf("progress over %s layer:\n%s", total, buf.String())
	}
}
