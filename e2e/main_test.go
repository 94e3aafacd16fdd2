package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestMain builds the clipd binary once, at <module root>/tmp/clipd: every
// end-to-end test drives that binary through its CLI and its socket, as a
// runtime or an operator would.
func TestMain(m *testing.M) {
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", "tmp/clipd", "./cmd/clipd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build -o tmp/clipd ./cmd/clipd: %v\n%s", err, out)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", filepath.Join(root, "tmp/clipd"), time.Since(start).Round(time.Millisecond))
	os.Exit(m.Run())
}

// moduleRoot is testenv.ModuleRoot without a *testing.T, for TestMain.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
