package bundle

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/clipd/clipd/index"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const testPasswd = `root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
`

const testGroup = `root:x:0:
daemon:x:1:
audio:x:29:app
app:x:1000:
video:x:44:app,other
staff:x:50:
`

func fixtureImage() *index.ImageInfo {
	return &index.ImageInfo{
		Entrypoint: []string{"/docker-entrypoint.sh"},
		Cmd:        []string{"python3", "-V"},
		Env:        []string{"LANG=C.UTF-8", "PYTHON_VERSION=3.11"},
		WorkingDir: "/srv",
		User:       "app",
	}
}

func TestSpecFixture(t *testing.T) {
	s, err := Spec(fixtureImage(), Options{RootPath: "/run/clipd/mnt/c1/rootfs", Readonly: true,
		Passwd: []byte(testPasswd), Group: []byte(testGroup)})
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != specs.Version {
		t.Errorf("ociVersion %q, want %q", s.Version, specs.Version)
	}
	if got, want := *s.Root, (specs.Root{Path: "/run/clipd/mnt/c1/rootfs", Readonly: true}); got != want {
		t.Errorf("root %+v, want %+v", got, want)
	}
	p := s.Process
	if want := []string{"/docker-entrypoint.sh", "python3", "-V"}; !slices.Equal(p.Args, want) {
		t.Errorf("args %q, want %q", p.Args, want)
	}
	// The image sets no PATH: the default is added; no terminal, no TERM;
	// HOME comes from the passwd entry.
	if want := []string{"LANG=C.UTF-8", "PYTHON_VERSION=3.11", DefaultPath, "HOME=/home/app"}; !slices.Equal(p.Env, want) {
		t.Errorf("env %q, want %q", p.Env, want)
	}
	if p.Cwd != "/srv" {
		t.Errorf("cwd %q, want /srv", p.Cwd)
	}
	if want := (specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{29, 44}}); !reflect.DeepEqual(p.User, want) {
		t.Errorf("user %+v, want %+v", p.User, want)
	}
	if p.Terminal {
		t.Error("terminal is true, want false")
	}
	if s.Hostname != DefaultHostname {
		t.Errorf("hostname %q, want %q", s.Hostname, DefaultHostname)
	}
	if !p.NoNewPrivileges {
		t.Error("noNewPrivileges is false")
	}
	if want := []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}}; !reflect.DeepEqual(p.Rlimits, want) {
		t.Errorf("rlimits %+v, want %+v", p.Rlimits, want)
	}
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	for name, got := range map[string][]string{"bounding": p.Capabilities.Bounding, "effective": p.Capabilities.Effective,
		"permitted": p.Capabilities.Permitted, "ambient": p.Capabilities.Ambient} {
		if !slices.Equal(got, caps) {
			t.Errorf("%s capabilities %q, want %q", name, got, caps)
		}
	}
	var ns []specs.LinuxNamespaceType
	for _, n := range s.Linux.Namespaces {
		if n.Path != "" {
			t.Errorf("namespace %s joins %s, want a new one", n.Type, n.Path)
		}
		ns = append(ns, n.Type)
	}
	if want := []specs.LinuxNamespaceType{"pid", "network", "ipc", "uts", "mount"}; !slices.Equal(ns, want) {
		t.Errorf("namespaces %q, want %q", ns, want)
	}
	var dests []string
	for _, m := range s.Mounts {
		dests = append(dests, m.Destination+" "+m.Type)
	}
	if want := []string{"/proc proc", "/dev tmpfs", "/dev/pts devpts", "/dev/shm tmpfs", "/dev/mqueue mqueue",
		"/sys sysfs", "/sys/fs/cgroup cgroup"}; !slices.Equal(dests, want) {
		t.Errorf("mounts %q, want %q", dests, want)
	}
	if !slices.Contains(s.Mounts[5].Options, "ro") {
		t.Errorf("/sys options %q lack ro", s.Mounts[5].Options)
	}
	if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("masked %q / readonly %q paths lack runc's defaults", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
}

// TestSpecMatchesRuncSpec compares the defaults with the config `runc spec`
// writes (as runc 1.1 writes it), apart from what the image decides.
func TestSpecMatchesRuncSpec(t *testing.T) {
	s, err := Spec(&index.ImageInfo{Cmd: []string{"sh"}}, Options{RootPath: "/r", Readonly: true, Terminal: true, Hostname: "runc"})
	if err != nil {
		t.Fatal(err)
	}
	var want specs.Spec
	if err := json.Unmarshal([]byte(runcSpec), &want); err != nil {
		t.Fatal(err)
	}
	want.Version, want.Root.Path = s.Version, "/r"
	want.Process.Env = append(want.Process.Env, "HOME=/") // umoci's addition, from the default user
	if !reflect.DeepEqual(*s, want) {
		got, _ := json.MarshalIndent(s, "", " ")
		exp, _ := json.MarshalIndent(&want, "", " ")
		t.Errorf("spec differs from runc spec:\ngot  %s\nwant %s", got, exp)
	}
}

func TestSpecDefaults(t *testing.T) {
	s, err := Spec(&index.ImageInfo{Cmd: []string{"sh"}, Env: []string{"PATH=/bin", "HOME=/x"}},
		Options{RootPath: "/r", Terminal: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"PATH=/bin", "HOME=/x", "TERM=xterm"}; !slices.Equal(s.Process.Env, want) {
		t.Errorf("env %q, want %q (image PATH and HOME kept, TERM added for a terminal)", s.Process.Env, want)
	}
	if s.Process.Cwd != "/" || s.Root.Readonly || !s.Process.Terminal {
		t.Errorf("cwd %q readonly %v terminal %v, want / false true", s.Process.Cwd, s.Root.Readonly, s.Process.Terminal)
	}
	if u := s.Process.User; u.UID != 0 || u.GID != 0 || len(u.AdditionalGids) != 0 {
		t.Errorf("user %+v, want root without supplementary groups", u)
	}

	if _, err := Spec(&index.ImageInfo{}, Options{RootPath: "/r"}); err == nil ||
		!strings.Contains(err.Error(), "neither Entrypoint nor Cmd") {
		t.Errorf("image without a command: err %v, want one saying there is nothing to run", err)
	}
	if _, err := Spec(&index.ImageInfo{Cmd: []string{"sh"}}, Options{RootPath: "rootfs"}); err == nil {
		t.Error("relative root path accepted")
	}
}

func TestResolveUser(t *testing.T) {
	for _, c := range []struct {
		spec       string
		uid, gid   uint32
		sgids      []uint32
		wantErr    string
		noPasswd   bool
		additional bool
	}{
		{spec: "", uid: 0, gid: 0},
		{spec: "app", uid: 1000, gid: 1000, sgids: []uint32{29, 44}},
		{spec: "app:staff", uid: 1000, gid: 50},
		{spec: "app:29", uid: 1000, gid: 29},
		{spec: "1000", uid: 1000, gid: 1000, sgids: []uint32{29, 44}},
		{spec: "1000:50", uid: 1000, gid: 50},
		{spec: "4242", uid: 4242, gid: 0},
		{spec: "4242:4343", uid: 4242, gid: 4343},
		{spec: "daemon", uid: 1, gid: 1},
		{spec: "4242:4343", uid: 4242, gid: 4343, noPasswd: true},
		{spec: "nobody", wantErr: `resolve image user "nobody"`},
		{spec: "app:nogroup", wantErr: `unable to find group nogroup`},
		{spec: "app", noPasswd: true, wantErr: "it has no /etc/passwd"},
	} {
		passwd, group := []byte(testPasswd), []byte(testGroup)
		if c.noPasswd {
			passwd, group = nil, nil
		}
		s, err := Spec(&index.ImageInfo{Cmd: []string{"id"}, User: c.spec}, Options{RootPath: "/r", Passwd: passwd, Group: group})
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("user %q: err %v, want %q", c.spec, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("user %q: %v", c.spec, err)
			continue
		}
		want := specs.User{UID: c.uid, GID: c.gid, AdditionalGids: c.sgids}
		if !reflect.DeepEqual(s.Process.User, want) {
			t.Errorf("user %q: %+v, want %+v", c.spec, s.Process.User, want)
		}
	}
}

func TestReadUserFilesStaysInRoot(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(outside, []byte("evil:x:0:0::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An absolute symbolic link in the image means the image's own file.
	if err := os.Symlink(outside, filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(outside)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, outside), []byte(testPasswd), 0o644); err != nil {
		t.Fatal(err)
	}
	passwd, group, err := ReadUserFilesAt(root)
	if err != nil {
		t.Fatal(err)
	}
	if string(passwd) != testPasswd {
		t.Errorf("passwd read %q, want the image's file %q", passwd, testPasswd)
	}
	if group != nil {
		t.Errorf("missing /etc/group read as %q, want nil", group)
	}

	if err := os.Mkdir(filepath.Join(root, "etc/group"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadUserFilesAt(root); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("/etc/group a directory: err %v, want not a regular file", err)
	}
}

func TestWriteConfig(t *testing.T) {
	dirPath := t.TempDir()
	dir, err := os.Open(dirPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	s, err := Spec(fixtureImage(), Options{RootPath: "/r", Passwd: []byte(testPasswd), Group: []byte(testGroup)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := WriteConfig(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dirPath, ConfigFile)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config.json mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var back specs.Spec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, s) {
		t.Errorf("config.json reads back as %+v, want %+v", back, *s)
	}
	if _, err := WriteConfig(dir, s); err == nil {
		t.Error("second WriteConfig replaced config.json, want an error (O_EXCL)")
	}

	// A config.json replaced meanwhile is not the one to remove (the
	// original is kept elsewhere so that its inode number is not reused).
	if err := os.Rename(p, p+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", p); err != nil {
		t.Fatal(err)
	}
	if removed, err := RemoveConfig(dir, w); err != nil || removed {
		t.Errorf("RemoveConfig of a replaced file: removed %v err %v, want false nil", removed, err)
	}
	if _, err := WriteConfig(dir, s); err == nil {
		t.Error("WriteConfig followed or replaced a symbolic link")
	}
	os.Remove(p)
	w, err = WriteConfig(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	if removed, err := RemoveConfig(dir, w); err != nil || !removed {
		t.Errorf("RemoveConfig: removed %v err %v, want true nil", removed, err)
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("config.json still there after RemoveConfig: %v", err)
	}
}
