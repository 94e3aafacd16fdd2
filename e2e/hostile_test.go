package e2e

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHostileRequests: what a local user allowed on the socket may send.
// Every answer is a client error naming the problem (never a 500, never a
// hang), nothing is created outside the request's mountpoint, and the
// daemon keeps serving.
func TestHostileRequests(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestHostileRequests")()
	d, archive := layoutFixture(t)
	dir := filepath.Dir(archive)
	root := d.mountRoot
	post := func(body []byte) (int, string) {
		t.Helper()
		status, resp, err := d.request(http.MethodPost, "/v1/mounts", body)
		if err != nil {
			t.Fatalf("POST %.80s: %v", body, err)
		}
		return status, string(resp)
	}
	mountReq := func(archive, mp string) []byte {
		b, _ := json.Marshal(map[string]string{"archive": archive, "mountpoint": mp})
		return b
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("n", 255) // NAME_MAX
	for _, c := range []struct {
		name   string
		body   []byte
		status int
		says   string
	}{
		{"the mount root itself", mountReq(archive, root), http.StatusForbidden, "is a mount root itself"},
		{"the mount root with a slash", mountReq(archive, root+"/"), http.StatusBadRequest, "clean path"},
		{"the mount root's parent", mountReq(archive, filepath.Dir(root)), http.StatusForbidden, "outside the mount roots"},
		{"a dot-dot escape", mountReq(archive, root+"/a/../../x"), http.StatusBadRequest, "clean path"},
		{"a 256-byte name", mountReq(archive, filepath.Join(root, long+"n")), http.StatusBadRequest, "file name too long"},
		{"a FIFO as archive", mountReq(fifo, filepath.Join(root, "fifo")), http.StatusBadRequest, "not a regular file"},
		{"/dev/zero as archive", mountReq("/dev/zero", filepath.Join(root, "zero")), http.StatusBadRequest, "not a regular file"},
		{"a directory as archive", mountReq(dir, filepath.Join(root, "dir")), http.StatusBadRequest, "not a regular file"},
		{"/proc/self/mem as archive", mountReq("/proc/self/mem", filepath.Join(root, "mem")), http.StatusUnprocessableEntity, ""},
		{"a NUL in the mountpoint", []byte(`{"archive":"` + archive + `","mountpoint":"` + root + `/a\u0000b"}`), http.StatusBadRequest, ""},
		{"deep nesting", append(append([]byte(`{"archive":`), bytes.Repeat([]byte("["), 1<<20-20)...), '}'), http.StatusBadRequest, ""},
		{"a body over 1 MiB", append(append([]byte(`{"archive":"`), bytes.Repeat([]byte("a"), 1<<20+1)...), `"}`...), http.StatusRequestEntityTooLarge, ""},
		{"an unknown field", []byte(`{"archive":"` + archive + `","mountpoint":"` + root + `/u","setuid_as":"root"}`), http.StatusBadRequest, ""},
	} {
		start := time.Now()
		status, resp := post(c.body)
		took := time.Since(start)
		t.Logf("%s: %d after %s: %.300s", c.name, status, took.Round(time.Millisecond), strings.TrimSpace(resp))
		if status != c.status || !strings.Contains(resp, c.says) {
			t.Errorf("%s: %d %.300s, want %d saying %q", c.name, status, resp, c.status, c.says)
		}
		if took > 5*time.Second {
			t.Errorf("%s: answered after %s", c.name, took)
		}
	}
	// None of these left anything in the root.
	if ents, _ := os.ReadDir(root); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("refused requests left %v in the mount root", names)
	}

	// Duplicate keys: the last one counts, for the check and the mount
	// alike (the answer names what was mounted).
	mp255 := filepath.Join(root, long)
	dup := []byte(`{"archive":"/etc/shadow","mountpoint":"/etc","archive":"` + archive + `","mountpoint":"` + mp255 + `"}`)
	status, resp := post(dup)
	if status != http.StatusCreated {
		t.Fatalf("duplicate keys, 255-byte name: %d %s", status, resp)
	}
	var mi struct{ ID, Archive, Mountpoint string }
	if err := json.Unmarshal([]byte(resp), &mi); err != nil || mi.Archive != archive || mi.Mountpoint != mp255 {
		t.Errorf("duplicate keys: mounted %+v (%v), want %s at %s", mi, err, archive, mp255)
	}
	if !mounted(t, mp255) {
		t.Errorf("%s is not mounted", mp255)
	}
	ls := d.clipd(t, "ls")
	if !strings.Contains(ls, long) {
		t.Errorf("clipd ls does not show the 255-byte mountpoint:\n%s", ls)
	}
	if st, b, err := d.request(http.MethodDelete, "/v1/mounts/"+mi.ID, nil); err != nil || st != http.StatusOK {
		t.Errorf("DELETE %s: %d %s %v", mi.ID, st, b, err)
	}

	// Peers that hang up while their mount is being made: afterwards every
	// clipd mount under the root is one the API lists, and every listed
	// mount is mounted.
	for i := range 24 {
		conn, err := net.Dial("unix", d.socket)
		if err != nil {
			t.Fatal(err)
		}
		body := mountReq(archive, filepath.Join(root, "hangup", "m"+string(rune('a'+i))))
		req := "POST /v1/mounts HTTP/1.1\r\nHost: clipd\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + string(body)
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i*10) * time.Millisecond) // hang up at a different step each time
		conn.Close()
	}
	listedAndMounted(t, d, root, filepath.Join(root, "hangup"))

	// The daemon still serves.
	if st, b, err := d.request(http.MethodGet, "/v1/health", nil); err != nil || st != http.StatusOK {
		t.Fatalf("health after the attacks: %d %s %v", st, b, err)
	}
}

// listedAndMounted waits until the requests in flight are done (the mount
// table, the API's list and the directories under dir agree), then checks
// that every clipd mount under root is listed, every listed mount is
// mounted, and every directory under dir is a listed mountpoint: an
// abandoned request leaves neither a mount nor a directory.
func listedAndMounted(t *testing.T, d *daemon, root, dir string) {
	t.Helper()
	var onDisk, listed, dirs []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		onDisk = clipdMounts(t, root)
		listed = listed[:0]
		for _, m := range listMounts(t, d) {
			listed = append(listed, m.Mountpoint)
		}
		dirs = dirs[:0]
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			dirs = append(dirs, filepath.Join(dir, e.Name()))
		}
		slices.Sort(onDisk)
		slices.Sort(listed)
		if (slices.Equal(onDisk, listed) && slices.Equal(dirs, listed)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !slices.Equal(onDisk, listed) {
		t.Errorf("mounted under the root: %v; listed by the API: %v", onDisk, listed)
	}
	if !slices.Equal(dirs, listed) {
		t.Errorf("directories under %s: %v; listed mountpoints: %v (abandoned requests leave their directories)", dir, dirs, listed)
	}
	t.Logf("%d mounts made by requests whose peer hung up, all listed", len(listed))
}
