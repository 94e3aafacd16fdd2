package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// debianPythonTags are the tags every debian-python layout holds.
func debianPythonTags() []string { return []string{"minbase", "python"} }

// DebianPythonLayout returns the directory of an OCI image layout with tags
// "minbase" (debootstrap --variant=minbase bookworm, one layer) and "python"
// (the same layer plus python3, two layers). Callers must treat it as
// read-only: it may be the shared copy.
//
// It uses <module root>/../shared/images/debian-python when present (a
// speed-up on the team's machines), otherwise <module root>/.cache/images/
// debian-python, building it with scripts/build-debian-image.sh the first
// time (debootstrap from deb.debian.org: minutes, ~60 MB downloaded). umoci
// and skopeo only read a layout, so nothing is copied.
func DebianPythonLayout(t testing.TB) string {
	t.Helper()
	root := ModuleRoot(t)
	shared := filepath.Join(root, "..", "shared", "images", "debian-python")
	if hasTags(shared, debianPythonTags()) {
		return filepath.Clean(shared)
	}
	cached := filepath.Join(root, ".cache", "images", "debian-python")
	if hasTags(cached, debianPythonTags()) {
		return cached
	}
	RequireTools(t, "debootstrap", "umoci", "chroot")
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		t.Fatalf("debian-python layout: %v", err)
	}
	// Two test binaries may get here at once (go test ./... runs packages
	// in parallel): the second waits for the first build instead of
	// debootstrapping into the same directory.
	unlock, err := lockFile(filepath.Join(filepath.Dir(cached), ".debian-python.lock"))
	if err != nil {
		t.Fatalf("debian-python layout: %v", err)
	}
	defer unlock()
	if hasTags(cached, debianPythonTags()) {
		return cached
	}
	t.Logf("building %s with scripts/build-debian-image.sh (debootstrap; takes minutes)", cached)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "build-debian-image.sh"), cached)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build debian-python layout: %v\n%s", err, tail(out, 4000))
	}
	if !hasTags(cached, debianPythonTags()) {
		t.Fatalf("build debian-python layout: %s lacks tags %v after the build\n%s", cached, debianPythonTags(), tail(out, 4000))
	}
	t.Logf("built %s in %s", cached, time.Since(start).Round(time.Second))
	return cached
}

// hasTags reports whether dir is an OCI layout whose index names every tag.
func hasTags(dir string, tags []string) bool {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return false
	}
	var idx struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if json.Unmarshal(b, &idx) != nil {
		return false
	}
	have := map[string]bool{}
	for _, m := range idx.Manifests {
		have[m.Annotations["org.opencontainers.image.ref.name"]] = true
	}
	for _, tag := range tags {
		if !have[tag] {
			return false
		}
	}
	return true
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
