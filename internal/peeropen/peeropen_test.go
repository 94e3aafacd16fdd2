package peeropen

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var nobody = Identity{UID: 65534, GID: 65534}

func TestIdentityString(t *testing.T) {
	for _, id := range []Identity{{}, nobody, {UID: 1000, GID: 100, Groups: []uint32{4, 24, 27}}} {
		got, err := Parse(id.String())
		if err != nil || !reflect.DeepEqual(got, id) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", id.String(), got, err, id)
		}
	}
	for _, bad := range []string{"", "1", "1:2", "a:2:", "1:b:", "1:2:x", "1:2:3:4", "-1:2:", "4294967296:0:"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// openTree makes a directory nobody can traverse holding a 0644 and a 0600
// file, a FIFO and a directory.
func openTree(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it opens files as another user")
	}
	dir := t.TempDir()
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, mode := range map[string]os.FileMode{"public": 0o644, "secret": 0o600} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(name), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkOpens(t *testing.T, dir string) {
	t.Helper()
	for _, id := range []Identity{{}, nobody} {
		f, err := OpenRegular(id, filepath.Join(dir, "public"))
		if err != nil {
			t.Errorf("uid %d: open public: %v", id.UID, err)
		} else {
			f.Close()
		}
		// Not regular: refused at once, a FIFO without a writer included.
		for _, p := range []string{filepath.Join(dir, "fifo"), filepath.Join(dir, "dir"), "/dev/zero"} {
			start := time.Now()
			f, err := OpenRegular(id, p)
			if err == nil {
				f.Close()
			}
			if !errors.Is(err, ErrNotRegular) || time.Since(start) > time.Second {
				t.Errorf("uid %d: open %s: %v after %s, want ErrNotRegular at once", id.UID, p, err, time.Since(start))
			}
		}
	}
	f, err := OpenRegular(nobody, filepath.Join(dir, "secret"))
	var idErr *IdentityError
	if err == nil {
		f.Close()
		t.Errorf("uid 65534 opened a 0600 root file")
	} else if errors.As(err, &idErr) || !errors.Is(err, unix.EACCES) {
		t.Errorf("uid 65534: open secret: %v, want EACCES", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "secret")); err != nil || string(b) != "secret" {
		t.Errorf("this thread lost root's access after opening as a peer: %v", err)
	}
}

func TestOpenRegular(t *testing.T) { checkOpens(t, openTree(t)) }

// TestServiceCapabilities runs the opens under the capability bounding set
// clipd.service gives the daemon: taking a peer's identity needs
// CAP_SETUID and CAP_SETGID, which a hardened unit could leave out.
func TestServiceCapabilities(t *testing.T) {
	if dir := os.Getenv("PEEROPEN_TREE"); dir != "" {
		checkOpens(t, dir) // the child, under the unit's capabilities
		return
	}
	caps := unitCapabilities(t, "../../systemd/clipd.service")
	keep := make([]string, len(caps))
	for i, c := range caps {
		keep[i] = "+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	dir := openTree(t)
	cmd := exec.Command("setpriv", "--bounding-set", "-all,"+strings.Join(keep, ","),
		os.Args[0], "-test.run", "^TestServiceCapabilities$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "PEEROPEN_TREE="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("under the bounding set of clipd.service (%s): %v\n%s", strings.Join(caps, " "), err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestServiceCapabilities") {
		t.Fatalf("the child did not run the test:\n%s", out)
	}
}

func unitCapabilities(t *testing.T, unit string) []string {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapabilityBoundingSet="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("%s sets no CapabilityBoundingSet", unit)
	return nil
}
