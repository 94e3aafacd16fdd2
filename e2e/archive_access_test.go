package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/beam-cloud/clip/pkg/common"
	"github.com/clipd/clipd/internal/testenv"
)

// nobody is the allowed non-root peer of these tests.
const nobody = 65534

// shadowLike is content a peer must never see quoted back.
var shadowLike = []byte("root:*:20116:0:99999:7:::\nadmin:$y$j9T$Zm9vYmFyYmF6cXV4$topsecrethash:20116:0:99999:7:::\n")

// openToAll makes every directory from p up to / traversable (t.TempDir
// makes 0700 directories), so that the test's non-root peer can reach p.
func openToAll(t testing.TB, p string) {
	t.Helper()
	for ; p != "/" && p != "."; p = filepath.Dir(p) {
		if p == os.TempDir() {
			break
		}
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// shareLayout makes every file of layout readable by everyone (the fixture
// writes some blobs 0600) and the directories up to / traversable.
func shareLayout(t testing.TB, layout string) {
	t.Helper()
	err := filepath.WalkDir(layout, func(p string, de os.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case de.IsDir():
			return os.Chmod(p, 0o755)
		default:
			return os.Chmod(p, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	openToAll(t, layout)
}

// writeFileMode writes b to p (owner root) with mode.
func writeFileMode(t testing.TB, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// sparseHostileClip is the memory bomb: a 170-byte header claiming a 4 GiB
// index, extended by a hole to 4 GiB + 170 bytes so the claim fits the size.
func sparseHostileClip(t testing.TB, p string) {
	t.Helper()
	h := common.ClipArchiveHeader{
		ClipFileFormatVersion: common.ClipFileFormatVersion,
		IndexPos:              common.ClipHeaderLength,
		IndexLength:           4 << 30,
	}
	copy(h.StartBytes[:], common.ClipFileStartBytes)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &h); err != nil {
		t.Fatal(err)
	}
	b := append(buf.Bytes(), make([]byte, 170-buf.Len())...)
	writeFileMode(t, p, b, 0o644)
	if err := os.Truncate(p, 4<<30+170); err != nil {
		t.Fatal(err)
	}
}

// mountAs sends a mount request over the socket as uid and gid nobody with
// no supplementary groups (setpriv + curl), and returns status and body.
func (d *daemon) mountAs(t testing.TB, archive, mountpoint string) (int, []byte) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"archive": archive, "mountpoint": mountpoint})
	out := run(t, "setpriv", "--reuid="+strconv.Itoa(nobody), "--regid="+strconv.Itoa(nobody), "--clear-groups",
		"curl", "-sS", "--max-time", "120", "--unix-socket", d.socket, "-H", "Content-Type: application/json",
		"--data-binary", string(body), "-w", "\n%{http_code}", "http://clipd/v1/mounts")
	i := strings.LastIndexByte(out, '\n')
	status, err := strconv.Atoi(strings.TrimSpace(out[i+1:]))
	if i < 0 || err != nil {
		t.Fatalf("curl output %q has no status", out)
	}
	return status, []byte(out[:i])
}

// apiError decodes an error body.
func apiError(t testing.TB, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not an API error body (%v): %s", err, body)
	}
	return e.Error.Code, e.Error.Message
}

// quotesFile reports whether body holds any recognisable piece of content:
// a run of 8 bytes of it, raw or in hex (the bad-magic error of old quoted
// the first 9 bytes as "72 6f 6f 74 ...").
func quotesFile(body, content []byte) bool {
	for i := 0; i+8 <= len(content); i++ {
		frag := content[i : i+8]
		if bytes.Contains(body, frag) ||
			bytes.Contains(body, []byte(hex.EncodeToString(frag))) ||
			bytes.Contains(body, []byte(strings.TrimSpace(spacedHex(frag)))) {
			return true
		}
	}
	return false
}

func spacedHex(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		s.WriteString(hex.EncodeToString([]byte{c}) + " ")
	}
	return s.String()
}

// startPeerDaemon starts a daemon that allows uid nobody, with a socket
// nobody can reach.
func startPeerDaemon(t testing.TB) *daemon {
	t.Helper()
	d := newDaemonConfig(t, "", "")
	cfg, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("[daemon]\n"), []byte("[daemon]\nallowed_uids = ["+strconv.Itoa(nobody)+"]\n"), 1)
	if err := os.WriteFile(d.config, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	d = launch(t, d)
	// The socket is 0660 root: this test lets the peer reach it.
	openToAll(t, filepath.Dir(d.socket))
	if err := os.Chmod(d.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestArchiveAccess: an allowed non-root peer mounts only what it can read
// itself, cannot tell a missing path from an unreadable one, never sees a
// byte of a file in an error, and a hostile sparse header is refused fast
// by a serving process that stays small.
func TestArchiveAccess(t *testing.T) {
	requireE2ETools(t)
	testenv.RequireTools(t, "setpriv", "curl")
	defer timed(t, "TestArchiveAccess")()
	dir, layout := fixtureLayout(t)
	shareLayout(t, layout) // the archive's blobs are read with the peer's rights
	d := startPeerDaemon(t)

	files := filepath.Join(dir, "files")
	if err := os.MkdirAll(filepath.Join(files, "closed"), 0o755); err != nil {
		t.Fatal(err)
	}
	openToAll(t, files)
	good := d.index(t, "oci-layout:"+layout+":fixture", filepath.Join(files, "good.clip"))
	if err := os.Chmod(good, 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(files, "secret.clip") // a valid archive, root only
	writeFileMode(t, secret, raw, 0o600)
	inClosed := filepath.Join(files, "closed", "inside.clip")
	writeFileMode(t, inClosed, raw, 0o644)
	if err := os.Chmod(filepath.Join(files, "closed"), 0o700); err != nil {
		t.Fatal(err)
	}
	shadowPublic := filepath.Join(files, "shadow-public")
	writeFileMode(t, shadowPublic, shadowLike, 0o644)
	shadowPrivate := filepath.Join(files, "shadow-private")
	writeFileMode(t, shadowPrivate, shadowLike, 0o600)
	sparse := filepath.Join(files, "sparse.clip")
	sparseHostileClip(t, sparse)

	mp := func(name string) string {
		p := filepath.Join(d.mountRoot, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Unreadable file, file in an unreadable directory, missing file,
	// unreadable non-archive: one status, one code, one message shape.
	type answer struct {
		status  int
		code    string
		message string
	}
	var first *answer
	for i, p := range []string{secret, inClosed, filepath.Join(files, "missing.clip"), filepath.Join(files, "closed", "missing.clip"), shadowPrivate} {
		status, body := d.mountAs(t, p, mp("refused-"+strconv.Itoa(i)))
		if status < 400 {
			t.Errorf("uid %d mounted %s, which it cannot read: %d %s", nobody, p, status, body)
			continue
		}
		code, msg := apiError(t, body)
		t.Logf("uid %d, %s: %d %s: %s", nobody, p, status, code, msg)
		a := answer{status, code, strings.ReplaceAll(msg, p, "PATH")}
		if first == nil {
			first = &a
		} else if a != *first {
			t.Errorf("%s: answer %+v differs from %+v: the answer tells paths apart", p, a, *first)
		}
		if quotesFile(body, shadowLike) || quotesFile(body, raw[:64]) {
			t.Errorf("%s: error body quotes the file: %s", p, body)
		}
	}
	if first != nil && (first.status != http.StatusNotFound || first.code != "archive_unavailable") {
		t.Errorf("unreadable archives answer %+v, want 404 archive_unavailable", *first)
	}

	// A readable non-archive (root and peer alike): 422, no byte quoted.
	for _, who := range []string{"root", "nobody"} {
		var status int
		var body []byte
		if who == "root" {
			b, _ := json.Marshal(map[string]string{"archive": shadowPublic, "mountpoint": mp("shadow-root")})
			status, body, err = d.request(http.MethodPost, "/v1/mounts", b)
			if err != nil {
				t.Fatal(err)
			}
		} else {
			status, body = d.mountAs(t, shadowPublic, mp("shadow-nobody"))
		}
		code, msg := apiError(t, body)
		t.Logf("%s, shadow-like file: %d %s: %s", who, status, code, msg)
		if status != http.StatusUnprocessableEntity || !strings.Contains(msg, "not a .clip file (bad magic)") {
			t.Errorf("%s: shadow-like file: %d %s, want 422 bad magic", who, status, body)
		}
		if quotesFile(body, shadowLike) {
			t.Errorf("%s: error body quotes the file: %s", who, body)
		}
	}

	// The memory bomb: 422 within a second.
	b, _ := json.Marshal(map[string]string{"archive": sparse, "mountpoint": mp("sparse")})
	start := time.Now()
	status, body, err := d.request(http.MethodPost, "/v1/mounts", b)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sparse hostile header: %d after %s: %s", status, took.Round(time.Millisecond), bytes.TrimSpace(body))
	if status != http.StatusUnprocessableEntity {
		t.Errorf("sparse hostile header: %d %s, want 422", status, body)
	}
	if took > time.Second {
		t.Errorf("sparse hostile header answered after %s, want < 1s", took)
	}
	// ... and the serving process that parses it stays small: run one as
	// the daemon does (archive passed open) and read its peak RSS.
	if rss := serveMountPeakRSS(t, d, sparse, mp("sparse-direct")); rss >= 64<<20 {
		t.Errorf("serving process peaked at %d MiB RSS on the sparse header, want < 64 MiB", rss>>20)
	} else {
		t.Logf("serving process peak RSS on the sparse header: %.1f MiB", float64(rss)/(1<<20))
	}

	// What the peer can read, it mounts, and reads through the mount.
	status, body = d.mountAs(t, good, mp("good"))
	if status != http.StatusCreated {
		t.Fatalf("uid %d cannot mount a world-readable archive: %d %s", nobody, status, body)
	}
	var created struct{ ID, Mountpoint string }
	if err := json.Unmarshal(body, &created); err != nil || created.ID == "" {
		t.Fatalf("201 body %s: %v", body, err)
	}
	entries, err := os.ReadDir(created.Mountpoint)
	if err != nil || len(entries) == 0 {
		t.Errorf("mounted archive lists %d entries: %v", len(entries), err)
	}
	if status, body, err := d.request(http.MethodDelete, "/v1/mounts/"+created.ID, nil); err != nil || status != http.StatusOK {
		t.Errorf("unmount: %d %s %v", status, body, err)
	}
	if left := leftoverClipd(t, d.mountRoot); len(left) > 0 {
		t.Errorf("mounts left behind: %v", left)
	}
}

// serveMountPeakRSS runs `clipd serve-mount` on archive, passed as an open
// descriptor as the daemon passes it, and returns its peak RSS in bytes.
func serveMountPeakRSS(t testing.TB, d *daemon, archive, mountpoint string) int64 {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	control := filepath.Join(t.TempDir(), "control.sock")
	cmd := exec.CommandContext(ctx, d.bin, "serve-mount", "--id", "rss", "--archive", archive, "--archive-fd", "3",
		"--mountpoint", mountpoint, "--control", control, "--cache", d.cacheDir)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("serve-mount of the sparse header succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "exceeds the limit") {
		t.Errorf("serve-mount of the sparse header: %v, want an index limit error:\n%s", err, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Fatal("no rusage for serve-mount")
	}
	return ru.Maxrss * 1024 // KiB on Linux
}

// TestLayoutBlobAccess: an archive indexing an OCI layout names the layout
// directory, and the serving process reads its blobs. An allowed non-root
// peer that can read the archive but not the layout (root only, or gone)
// gets the archive_unavailable answer, the same for both; root mounts the
// same archive; a layout the peer can read mounts and reads.
func TestLayoutBlobAccess(t *testing.T) {
	requireE2ETools(t)
	testenv.RequireTools(t, "setpriv", "curl")
	defer timed(t, "TestLayoutBlobAccess")()
	d := startPeerDaemon(t)
	files := filepath.Join(t.TempDir(), "files")
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	openToAll(t, files)
	layoutArchive := func(name string) (layout, archive string) {
		dir, layout := fixtureLayout(t)
		shareLayout(t, layout)
		archive = d.index(t, "oci-layout:"+layout+":fixture", filepath.Join(files, name+".clip"))
		if err := os.Chmod(archive, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return layout, archive
	}
	readable, readableClip := layoutArchive("readable")
	closed, closedClip := layoutArchive("closed")
	if err := os.Chmod(closed, 0o700); err != nil { // the layout: root only
		t.Fatal(err)
	}
	gone, goneClip := layoutArchive("gone")
	if err := os.Rename(gone, gone+".moved"); err != nil {
		t.Fatal(err)
	}
	mp := func(name string) string { return filepath.Join(d.mountRoot, name) }

	var first string
	for _, c := range []struct{ layout, archive string }{{closed, closedClip}, {gone, goneClip}} {
		status, body := d.mountAs(t, c.archive, mp("refused-"+filepath.Base(c.archive)))
		code, msg := apiError(t, body)
		t.Logf("uid %d, archive on layout %s: %d %s: %s", nobody, c.layout, status, code, msg)
		if status != http.StatusNotFound || code != "archive_unavailable" {
			t.Errorf("%s: %d %s, want 404 archive_unavailable", c.archive, status, body)
		}
		if !strings.Contains(msg, "not found or not readable by uid 65534") {
			t.Errorf("%s: message %q does not say what the peer cannot read", c.archive, msg)
		}
		shape := strings.NewReplacer(c.archive, "ARCHIVE", c.layout, "LAYOUT", mp("refused-"+filepath.Base(c.archive)), "MP").Replace(msg)
		if first == "" {
			first = shape
		} else if shape != first {
			t.Errorf("unreadable and missing layouts answer differently:\n%s\n%s", first, shape)
		}
		if _, err := os.Stat(mp("refused-" + filepath.Base(c.archive))); !os.IsNotExist(err) {
			t.Errorf("the refused request left its mountpoint behind (%v)", err)
		}
	}
	if left := leftoverClipd(t, d.mountRoot); len(left) > 0 {
		t.Errorf("mounts left behind by refused requests: %v", left)
	}

	// Root reads the root-only layout.
	id, _ := d.mount(t, closedClip, "root-closed")
	if status, body, err := d.request(http.MethodDelete, "/v1/mounts/"+id, nil); err != nil || status != http.StatusOK {
		t.Errorf("unmount: %d %s %v", status, body, err)
	}

	// The peer reads a layout it can read, through the mount.
	status, body := d.mountAs(t, readableClip, mp("readable"))
	if status != http.StatusCreated {
		t.Fatalf("uid %d cannot mount an archive on a readable layout %s: %d %s", nobody, readable, status, body)
	}
	var created struct{ ID, Mountpoint string }
	if err := json.Unmarshal(body, &created); err != nil || created.ID == "" {
		t.Fatalf("201 body %s: %v", body, err)
	}
	read := 0
	err := filepath.WalkDir(created.Mountpoint, func(p string, de os.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		read += len(b)
		return err
	})
	if err != nil || read == 0 {
		t.Errorf("reading the mount of a readable layout: %d bytes, %v", read, err)
	}
	if status, body, err := d.request(http.MethodDelete, "/v1/mounts/"+created.ID, nil); err != nil || status != http.StatusOK {
		t.Errorf("unmount: %d %s %v", status, body, err)
	}
}
