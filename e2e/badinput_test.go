package e2e

import (
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clipd/clipd/internal/fixture"
)

// TestBadInput sends the real daemon what a confused or hostile client
// would: every request must get a 4xx with a JSON error message, leave
// nothing mounted, and the daemon must still mount a good archive afterwards.
func TestBadInput(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestBadInput")()
	dir, layout := fixtureLayout(t)
	d := startDaemon(t)
	good := d.index(t, "oci-layout:"+layout+":fixture", filepath.Join(dir, "good.clip"))
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.clip")
	junk := make([]byte, 64*1024)
	_, _ = rand.Read(junk)
	truncated := filepath.Join(dir, "truncated.clip")
	headerOnly := filepath.Join(dir, "header-only.clip")
	empty := filepath.Join(dir, "empty.clip")
	for p, b := range map[string][]byte{
		garbage:    junk,
		truncated:  raw[:len(raw)/2],
		headerOnly: raw[:min(len(raw), 54)],
		empty:      nil,
	} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mp := func(name string) string {
		p := filepath.Join(d.mountRoot, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	body := func(archive, mountpoint string) []byte {
		b, _ := json.Marshal(map[string]string{"archive": archive, "mountpoint": mountpoint})
		return b
	}
	outside := t.TempDir() // a real directory, but not under the mount root
	cases := []struct {
		name string
		body []byte
	}{
		{"garbage archive", body(garbage, mp("garbage"))},
		{"truncated archive", body(truncated, mp("truncated"))},
		{"header-only archive", body(headerOnly, mp("header-only"))},
		{"empty archive", body(empty, mp("empty"))},
		{"unknown archive", body(filepath.Join(dir, "no-such.clip"), mp("unknown"))},
		{"relative archive", body("good.clip", mp("relative"))},
		{"mountpoint outside the roots", body(good, outside)},
		{"mountpoint escaping the root", body(good, d.mountRoot+"/../escape")},
		{"malformed JSON", []byte(`{"archive": "` + good + `", "mountpoint": `)},
		{"not an object", []byte(`["x"]`)},
		{"empty body", []byte{}},
	}
	for _, c := range cases {
		status, answer, err := d.request(http.MethodPost, "/v1/mounts", c.body)
		if err != nil {
			t.Errorf("%s: request failed: %v", c.name, err)
			continue
		}
		msg, merr := errorMessage(answer)
		switch {
		case status < 400 || status > 499:
			t.Errorf("%s: status %d, want 4xx; body %s", c.name, status, answer)
		case merr != nil:
			t.Errorf("%s: status %d but %v", c.name, status, merr)
		default:
			t.Logf("%s: %d %s", c.name, status, msg)
		}
	}
	// The CLI reports the daemon's refusal and exits non-zero.
	_, stderr, err := runErr(d.bin, "mount", "--socket", d.socket, garbage, mp("cli-garbage"))
	if err == nil {
		t.Errorf("clipd mount of a garbage archive succeeded")
	} else if strings.TrimSpace(stderr) == "" {
		t.Errorf("clipd mount of a garbage archive failed without a message on stderr")
	} else {
		t.Logf("clipd mount garbage: %v: %s", err, strings.TrimSpace(stderr))
	}
	// Unmounting what does not exist is a 404, not a crash.
	if status, answer, err := d.request(http.MethodDelete, "/v1/mounts/no-such-id", nil); err != nil || status != http.StatusNotFound {
		t.Errorf("DELETE of an unknown mount: %d %s %v, want 404", status, answer, err)
	}

	if left := leftoverClipd(t, d.mountRoot); len(left) > 0 {
		t.Fatalf("refused requests left mounts behind: %v", left)
	}
	if list := d.ls(t); len(list) != 0 {
		t.Fatalf("refused requests left %d mounts in the table: %v", len(list), list)
	}

	// The daemon survived all of it: a good archive mounts and reads.
	status, answer, err := d.request(http.MethodPost, "/v1/mounts", body(good, mp("good")))
	if err != nil || status != http.StatusCreated {
		t.Fatalf("good mount after bad input: %d %s %v, want 201", status, answer, err)
	}
	var created struct {
		ID         string `json:"id"`
		Mountpoint string `json:"mountpoint"`
	}
	if err := json.Unmarshal(answer, &created); err != nil || created.ID == "" {
		t.Fatalf("201 body %s: no id (%v)", answer, err)
	}
	content, err := os.ReadFile(filepath.Join(d.mountRoot, "good", "big", "blob"))
	if err != nil {
		t.Fatalf("read through the good mount: %v", err)
	}
	if string(content) != string(fixture.Big()) {
		t.Errorf("/big/blob through the mount: %d bytes differing from the fixture's %d", len(content), len(fixture.Big()))
	}
	if status, answer, err := d.request(http.MethodDelete, "/v1/mounts/"+created.ID, nil); err != nil || status/100 != 2 {
		t.Fatalf("DELETE /v1/mounts/%s: %d %s %v", created.ID, status, answer, err)
	}
	if mounted(t, created.Mountpoint) {
		t.Errorf("%s still mounted after DELETE", created.Mountpoint)
	}
}
