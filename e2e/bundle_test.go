package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/internal/testenv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// containerMount is a mount made with a bundle, the way a runtime asks for
// one: POST /v1/mounts with "bundle" (and "writable" where the rootfs must
// take writes), then `runc run --bundle`.
type containerMount struct {
	id, bundle, rootfs string
	writable           bool
	info               api.MountInfo
}

// mountContainer mounts archive at <root>/name/rootfs with its bundle in
// <root>/name (umoci's layout), both created by clipd.
func mountContainer(t *testing.T, d *daemon, archive, name string, writable bool) *containerMount {
	t.Helper()
	defer timed(t, "mount with bundle "+name)()
	c := &containerMount{bundle: filepath.Join(d.mountRoot, name), writable: writable}
	c.rootfs = filepath.Join(c.bundle, "rootfs")
	body, err := json.Marshal(api.CreateMount{Archive: archive, Mountpoint: c.rootfs, Bundle: c.bundle, Writable: writable})
	if err != nil {
		t.Fatal(err)
	}
	status, out, err := d.request(http.MethodPost, "/v1/mounts", body)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("POST /v1/mounts %s: %d %v\n%s\nlog:\n%s", body, status, err, out, d.logTail())
	}
	if err := json.Unmarshal(out, &c.info); err != nil {
		t.Fatal(err)
	}
	c.id = c.info.ID
	if c.info.Bundle != c.bundle {
		t.Errorf("answer bundle %q, want %q", c.info.Bundle, c.bundle)
	}
	return c
}

// spec reads the bundle's config.json.
func (c *containerMount) spec(t *testing.T) *specs.Spec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("config.json: %v", err)
	}
	return &s
}

// runc runs the container of bundle (its own runc state under stateDir) with
// stdin and returns its output; runc's exit status is the container's.
func runc(t *testing.T, stateDir, bundle, id, stdin string) (stdout, stderr string, err error) {
	t.Helper()
	defer timed(t, "runc run "+id)()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, "runc", "--root", stateDir, "run", "--bundle", bundle, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// withArgs copies the bundle's config.json into a new bundle directory with
// other process args (root.path is absolute, so the copy runs on the same
// rootfs).
func withArgs(t *testing.T, s *specs.Spec, args ...string) string {
	t.Helper()
	cp := *s
	proc := *s.Process
	proc.Args = args
	cp.Process = &proc
	b, err := json.Marshal(&cp)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRuncBundle: runc runs debian-python's default command from the
// bundle clipd wrote for a mount, and a command that reads files (and
// /dev/null, which runc's /dev provides: the mount is nodev); DELETE removes
// the bundle with the mount.
func TestRuncBundle(t *testing.T) {
	requireE2ETools(t)
	testenv.RequireTools(t, "runc")
	defer timed(t, "TestRuncBundle")()
	layout := testenv.DebianPythonLayout(t)
	d := startDaemon(t)
	archive := d.index(t, "oci-layout:"+layout+":python", filepath.Join(t.TempDir(), "python.clip"))

	// The image's config, as `clipd inspect` shows it.
	inspect := d.clipd(t, "inspect", archive)
	if !strings.Contains(inspect, `cmd:`) || !strings.Contains(inspect, `["/usr/bin/python3"]`) ||
		!strings.Contains(inspect, `PATH=/usr/local/sbin`) {
		t.Errorf("clipd inspect does not show the image config (cmd, env):\n%s", inspect)
	}

	// Read-only, then writable: the same request with "writable": true
	// (and root.readonly false in the bundle).
	for _, writable := range []bool{false, true} {
		name := fmt.Sprintf("c-writable-%v", writable)
		t.Run(name, func(t *testing.T) {
			c := mountContainer(t, d, archive, name, writable)
			if ic := c.info.ImageConfig; ic == nil || !slices.Equal(ic.Cmd, []string{"/usr/bin/python3"}) {
				t.Errorf("POST answer image_config %+v, want cmd [/usr/bin/python3]", ic)
			}
			status, out, err := d.request(http.MethodGet, "/v1/mounts/"+c.id, nil)
			var got api.MountInfo
			if err == nil {
				err = json.Unmarshal(out, &got)
			}
			if err != nil || status != http.StatusOK || got.ImageConfig == nil ||
				!slices.Equal(got.ImageConfig.Cmd, []string{"/usr/bin/python3"}) || len(got.ImageConfig.Env) == 0 {
				t.Errorf("GET /v1/mounts/%s: %d %v, want the image config (cmd, env):\n%s", c.id, status, err, out)
			}
			s := c.spec(t)
			if s.Root.Path != c.rootfs || s.Root.Readonly == writable {
				t.Errorf("root %+v, want path %s readonly %v", s.Root, c.rootfs, !writable)
			}
			if !slices.Equal(s.Process.Args, []string{"/usr/bin/python3"}) {
				t.Errorf("process.args %q, want the image's Cmd", s.Process.Args)
			}
			state := t.TempDir()

			// The image's default command, unchanged: python3 reads its
			// program from stdin.
			stdout, stderr, err := runc(t, state, c.bundle, name+"-default",
				"import sys, json, sqlite3\nprint(json.dumps({'py': sys.version_info[:2], 'sqlite': sqlite3.sqlite_version}))\n")
			if err != nil {
				t.Fatalf("runc run (default command): %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
			}
			t.Logf("default command (python3, program on stdin) printed %q", stdout)
			var py struct {
				Py     []int  `json:"py"`
				Sqlite string `json:"sqlite"`
			}
			if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &py); err != nil || !slices.Equal(py.Py, []int{3, 11}) || py.Sqlite == "" {
				t.Errorf("default command printed %q (%v), want python 3.11 with sqlite", stdout, err)
			}

			// A command that reads files through the mount and uses the /dev
			// runc mounts (the image's own device nodes are nodev).
			reads := withArgs(t, s, "sh", "-c",
				`cat /etc/debian_version && sha256sum /usr/bin/python3.11 >/dev/null && `+
					`python3 -c 'import email, json; print(len(open("/usr/lib/python3.11/json/__init__.py").read()) > 0)' && `+
					`head -c 16 /dev/urandom | wc -c && echo hidden >/dev/null && echo devnull-ok`)
			stdout, stderr, err = runc(t, state, reads, name+"-reads", "")
			if err != nil {
				t.Fatalf("runc run (reads): %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
			}
			t.Logf("reads printed %q", stdout)
			lines := strings.Fields(stdout)
			if len(lines) != 4 || !strings.HasPrefix(lines[0], "12") || lines[1] != "True" || lines[2] != "16" || lines[3] != "devnull-ok" {
				t.Errorf("reads printed %q, want debian 12, True, 16, devnull-ok", stdout)
			}
			if writable {
				// Writes land in the mount's upper directory, not in the
				// shared image mount.
				w := withArgs(t, s, "sh", "-c", "echo x >/tmp/f && cat /tmp/f && rm /etc/hostname")
				stdout, stderr, err := runc(t, state, w, name+"-writes", "")
				if err != nil || strings.TrimSpace(stdout) != "x" {
					t.Fatalf("runc run (writes): %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
				}
				upper := filepath.Join(c.info.UpperDir, "upper")
				if b, err := os.ReadFile(filepath.Join(upper, "tmp", "f")); err != nil || string(b) != "x\n" {
					t.Errorf("upper %s/tmp/f: %q %v, want the container's write", upper, b, err)
				}
				if fi, err := os.Lstat(filepath.Join(upper, "etc", "hostname")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
					t.Errorf("upper %s/etc/hostname: %v %v, want a whiteout (char device 0/0)", upper, fi, err)
				}
				if _, err := os.Stat(filepath.Join(c.info.Lower, "etc", "hostname")); err != nil {
					t.Errorf("the shared image mount lost /etc/hostname: %v", err)
				}
			} else {
				ro := withArgs(t, s, "sh", "-c", "echo x >/etc/clipd-test")
				if _, stderr, err := runc(t, state, ro, name+"-ro", ""); err == nil || !strings.Contains(stderr, "Read-only file system") {
					t.Errorf("write to the read-only rootfs: err %v stderr %q, want Read-only file system", err, stderr)
				}
			}

			d.umount(t, c.id, c.rootfs)
			if _, err := os.Lstat(c.bundle); !os.IsNotExist(err) {
				t.Errorf("bundle directory %s left after DELETE: %v", c.bundle, err)
			}
		})
	}

	// The same from a shell: clipd mount --bundle.
	t.Run("cli", func(t *testing.T) {
		c := &containerMount{bundle: filepath.Join(d.mountRoot, "cli")}
		c.rootfs = filepath.Join(c.bundle, "rootfs")
		out := strings.Fields(d.clipd(t, "mount", "--bundle", c.bundle, archive, c.rootfs))
		if len(out) == 0 {
			t.Fatal("clipd mount --bundle printed no mount id")
		}
		c.id = out[len(out)-1]
		if s := c.spec(t); s.Root.Path != c.rootfs || !slices.Equal(s.Process.Args, []string{"/usr/bin/python3"}) {
			t.Errorf("clipd mount --bundle wrote root %+v args %q", s.Root, s.Process.Args)
		}
		d.umount(t, c.id, c.rootfs)
		if _, err := os.Lstat(c.bundle); !os.IsNotExist(err) {
			t.Errorf("bundle directory %s left after clipd umount: %v", c.bundle, err)
		}
	})
}
