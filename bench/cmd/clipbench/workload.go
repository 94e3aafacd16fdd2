package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// rcharScript runs the workload, then reports the rchar of the shell:
// the kernel adds the I/O counters of every reaped child (and theirs) to
// the parent's, so this is every byte the workload's processes got from
// read(2)-like calls. mmap'd pages (shared libraries) are not in it.
const rcharScript = `"$@" >/dev/null; r=$?; while read k v; do [ "$k" = rchar: ] && echo "clipbench-rchar $v" >&2; done </proc/$$/io; exit $r`

// runMeasured runs argv with rcharScript and returns the bytes it read.
func runMeasured(ctx context.Context, argv ...string) (int64, error) {
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", rcharScript, "sh"}, argv...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var read int64 = -1
	var other []string
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "clipbench-rchar "); ok {
			read, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		} else {
			other = append(other, sc.Text())
		}
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, tailLines(other, 10))
	}
	if read < 0 {
		return 0, fmt.Errorf("%s: no rchar reported", strings.Join(argv, " "))
	}
	return read, nil
}

func tailLines(l []string, n int) string {
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// imageInfo is what the runc workload needs from the image config.
type imageInfo struct {
	Args []string
	Env  []string
	Cwd  string
}

// workloads knows how to run each workload against a root filesystem.
type workloads struct {
	catPath      string         // the ~5 MB file, relative to the root
	image        imageInfo      // for runc
	runcTemplate map[string]any // `runc spec` output
	scratch      string         // for overlays and bundles
	seq          int
}

// run runs workload w on root and returns the bytes it read and a cleanup
// to call after the clock stopped (it unmounts what the workload mounted).
func (ws *workloads) run(ctx context.Context, w, root string) (int64, func(), error) {
	return ws.runBundle(ctx, w, root, "")
}

// chrootDev runs argv chrooted into root with the host's /dev bound on the
// root's /dev, in a mount namespace of its own, the way a runtime gives a
// container its /dev: clipd mounts are nodev, so the image's own device
// nodes cannot be opened, and a program that opens /dev/null would fail.
// The bind goes away with the namespace: nothing is left on the mount.
func chrootDev(root string, argv ...string) []string {
	return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
		`r=$1; shift; mount --bind /dev "$r/dev" && exec chroot "$r" "$@"`, "sh", root}, argv...)
}

// runBundle is run for a root that comes with an OCI runtime bundle (clipd
// writes one on request: "bundle" in POST /v1/mounts); bundle "" for the
// contenders whose mounts have none.
func (ws *workloads) runBundle(ctx context.Context, w, root, bundle string) (int64, func(), error) {
	noop := func() {}
	switch w {
	case "python-import":
		n, err := runMeasured(ctx, chrootDev(root, "/usr/bin/python3", "-c", "import json, email, sqlite3")...)
		return n, noop, err
	case "ls-lR":
		n, err := runMeasured(ctx, "ls", "-lR", root)
		return n, noop, err
	case "cat-5mb":
		n, err := runMeasured(ctx, "cat", filepath.Join(root, ws.catPath))
		return n, noop, err
	case "runc":
		if bundle != "" {
			return ws.runcBundle(ctx, bundle)
		}
		return ws.runc(ctx, root)
	}
	return 0, noop, fmt.Errorf("unknown workload %q", w)
}

// runcBundle runs the container of a bundle clipd wrote: the image's
// command, with the config clipd derived from the image.
func (ws *workloads) runcBundle(ctx context.Context, bundle string) (int64, func(), error) {
	ws.seq++
	state := filepath.Join(ws.scratch, fmt.Sprintf("runc-%d-state", ws.seq))
	cleanup := func() { _ = os.RemoveAll(state) }
	n, err := runMeasured(ctx, "runc", "--root", state, "run", "--bundle", bundle, fmt.Sprintf("clipbench-%d-%d", os.Getpid(), ws.seq))
	return n, cleanup, err
}

// runc runs the image's command with runc for a contender whose mount
// comes without a bundle (the full pull, clip's own mount): the harness
// writes the bundle from `runc spec` and the image config, on an overlay
// whose lower layer is root, as a runtime would to give the container a
// writable rootfs.
func (ws *workloads) runc(ctx context.Context, root string) (int64, func(), error) {
	ws.seq++
	dir := filepath.Join(ws.scratch, fmt.Sprintf("runc-%d", ws.seq))
	upper, work, merged, bundle := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged"), filepath.Join(dir, "bundle")
	for _, d := range []string{upper, work, merged, bundle} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, func() {}, fmt.Errorf("runc dirs: %w", err)
		}
	}
	cleanup := func() {
		_ = unix.Unmount(merged, unix.MNT_DETACH)
		_ = os.RemoveAll(dir)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", root, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return 0, cleanup, fmt.Errorf("mount overlay on %s: %w", root, err)
	}
	if err := ws.writeBundle(bundle, merged); err != nil {
		return 0, cleanup, err
	}
	n, err := runMeasured(ctx, "runc", "--root", filepath.Join(dir, "state"), "run", "--bundle", bundle, fmt.Sprintf("clipbench-%d-%d", os.Getpid(), ws.seq))
	return n, cleanup, err
}

func (ws *workloads) writeBundle(bundle, rootfs string) error {
	var cfg map[string]any
	b, _ := json.Marshal(ws.runcTemplate)
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("runc template: %w", err)
	}
	cfg["root"] = map[string]any{"path": rootfs, "readonly": false}
	proc, _ := cfg["process"].(map[string]any)
	if proc == nil {
		return fmt.Errorf("runc template has no process")
	}
	proc["terminal"] = false
	proc["args"] = ws.image.Args
	if len(ws.image.Env) > 0 {
		proc["env"] = ws.image.Env
	}
	proc["cwd"] = ws.image.Cwd
	out, err := json.MarshalIndent(cfg, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, "config.json"), out, 0o644)
}

// runcTemplate returns the default spec `runc spec` writes.
func runcTemplate(ctx context.Context, scratch string) (map[string]any, error) {
	dir, err := os.MkdirTemp(scratch, "runc-spec-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if _, err := run(ctx, "runc", "spec", "--bundle", dir); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("runc spec: %w", err)
	}
	return cfg, nil
}

// pickLargeFile returns the regular file under root whose size is closest
// to target, relative to root.
func pickLargeFile(root string, target int64) (string, int64, error) {
	best, bestSize := "", int64(-1)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if bestSize < 0 || abs(fi.Size()-target) < abs(bestSize-target) {
			best, bestSize = p, fi.Size()
		}
		return nil
	})
	if err != nil || best == "" {
		return "", 0, fmt.Errorf("no regular file under %s: %v", root, err)
	}
	rel, _ := filepath.Rel(root, best)
	return rel, bestSize, nil
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
