package daemon

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// archiveTree makes a directory the nobody user can traverse, holding files
// of the given modes (owner root) and a 0700 directory with a file inside.
func archiveTree(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root: it opens files as another user")
	}
	dir := t.TempDir()
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil { // MkdirTemp makes 0700 dirs
			t.Fatal(err)
		}
	}
	write := func(name string, mode os.FileMode, gid int) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("content of "+name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 0, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("public.clip", 0o644, 0)
	write("secret.clip", 0o600, 0)
	write("group4242.clip", 0o640, 4242)
	write("nogroup.clip", 0o640, 65534)
	write("closed/inside.clip", 0o644, 0)
	if err := os.Chmod(filepath.Join(dir, "closed"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenArchiveWithPeerRights(t *testing.T) {
	dir := archiveTree(t)
	nobody := Peer{UID: 65534, GID: 65534, Known: true}
	withGroup := Peer{UID: 65534, GID: 65534, Groups: []uint32{4242}, Known: true}
	root := Peer{Known: true}

	opens := []struct {
		peer Peer
		name string
	}{
		{nobody, "public.clip"},
		{nobody, "nogroup.clip"},      // primary group
		{withGroup, "group4242.clip"}, // supplementary group
		{root, "secret.clip"},
		{root, "closed/inside.clip"},
	}
	for _, c := range opens {
		p := filepath.Join(dir, c.name)
		f, err := openArchive(c.peer, p)
		if err != nil {
			t.Errorf("uid %d groups %v: open %s: %v", c.peer.UID, c.peer.Groups, c.name, err)
			continue
		}
		b, err := io.ReadAll(f)
		f.Close()
		if err != nil || string(b) != "content of "+c.name {
			t.Errorf("uid %d: read %s: %q %v", c.peer.UID, c.name, b, err)
		}
	}

	// Everything the peer cannot read gets one answer, whatever the cause.
	for _, name := range []string{"secret.clip", "closed/inside.clip", "missing.clip", "closed/missing.clip", "public.clip/x", "group4242.clip"} {
		p := filepath.Join(dir, name)
		f, err := openArchive(nobody, p)
		if err == nil {
			f.Close()
			t.Errorf("uid 65534 opened %s", name)
			continue
		}
		var ae *api.Error
		want := "archive " + p + ": not found or not readable by uid 65534"
		if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != api.CodeArchiveUnavailable || ae.Message != want {
			t.Errorf("%s: %#v, want 404 %s %q", name, err, api.CodeArchiveUnavailable, want)
		}
	}

	// What the peer can see for itself is answered as such.
	for _, c := range []struct {
		peer       Peer
		path, code string
		status     int
		inMessage  string
	}{
		{nobody, filepath.Join(dir, "adir"), api.CodeBadRequest, 400, "not a regular file"},
		{root, filepath.Join(dir, "missing.clip"), api.CodeNotFound, 404, "not found"},
		{nobody, "relative.clip", api.CodeBadRequest, 400, "absolute"},
	} {
		_, err := openArchive(c.peer, c.path)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != c.status || ae.Code != c.code || !strings.Contains(ae.Message, c.inMessage) {
			t.Errorf("uid %d %s: %v, want %d %s", c.peer.UID, c.path, err, c.status, c.code)
		}
	}

	// The peer's identity stayed on threads that are gone: this goroutine
	// (and any thread the runtime hands it) still opens as root.
	for range 20 {
		b, err := os.ReadFile(filepath.Join(dir, "secret.clip"))
		if err != nil || string(b) != "content of secret.clip" {
			t.Fatalf("root lost access after opening as a peer: %v", err)
		}
		if f, err := openArchive(nobody, filepath.Join(dir, "public.clip")); err == nil {
			f.Close()
		}
	}
}

func TestPeerGroups(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	got := peerGroups(fds[0])
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatalf("SO_PEERGROUPS unavailable")
	}
	g := make([]int, len(got))
	for i, x := range got {
		g[i] = int(x)
	}
	slices.Sort(g)
	slices.Sort(want)
	if !slices.Equal(g, want) {
		t.Errorf("peer groups %v, want %v", g, want)
	}
}
