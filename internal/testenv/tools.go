// Package testenv holds helpers for tests of every package and for e2e:
// required tools, a real docker-registry on 127.0.0.1, pushing OCI layouts,
// and a counting proxy in front of a registry.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// aptPackage maps a tool to the Debian package that provides it.
func aptPackage(tool string) string {
	switch tool {
	case "fusermount3":
		return "fuse3"
	case "docker-registry", "skopeo", "umoci", "pigz", "zstd", "debootstrap", "tar", "runc", "gzip":
		return tool
	case "mkfs.ext4":
		return "e2fsprogs"
	case "unshare", "mount", "umount":
		return "util-linux"
	case "tc", "ip":
		return "iproute2"
	default:
		return tool
	}
}

// RequireTools fails t, naming what to install, when any of names is not on
// PATH. Integration tests fail rather than skip so that a missing dependency
// cannot pass for success.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	var missing, pkgs []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
			pkgs = append(pkgs, aptPackage(n))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("required tools missing: %s (install with: apt-get install %s)",
			strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
}

// ModuleRoot returns the directory holding go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("module root: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
