package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/bench"
	"golang.org/x/sys/unix"
)

// daemon is a `clipd serve` with its own socket, state, cache and mount
// root under dir; the benchmark talks to it only through the API.
type daemon struct {
	dir, socket, mountRoot, cacheDir, log string
	cmd                                   *exec.Cmd
	done                                  chan struct{}
	api                                   *api.Client
}

// startDaemon starts `clipd serve` on dir; extra is appended to its
// config (a [prefetch] section for the profile runs).
func startDaemon(ctx context.Context, bin, dir, extra string) (*daemon, error) {
	d := &daemon{
		dir:       dir,
		socket:    filepath.Join(dir, "clipd.sock"),
		mountRoot: filepath.Join(dir, "mnt"),
		cacheDir:  filepath.Join(dir, "cache"),
		log:       filepath.Join(dir, "clipd.log"),
		done:      make(chan struct{}),
	}
	for _, p := range []string{d.mountRoot, d.cacheDir, filepath.Join(dir, "state")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("clipd dirs: %w", err)
		}
	}
	// build_missing = false: a mount by reference that does not find the
	// published index fails instead of silently downloading every layer.
	cfg := fmt.Sprintf("[daemon]\nsocket = %q\nstate_dir = %q\nmount_roots = [%q]\nlog_level = \"warn\"\n\n[cache]\ndir = %q\n\n[index]\nbuild_missing = false\n",
		d.socket, d.stateDir(), d.mountRoot, d.cacheDir) + extra
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, fmt.Errorf("clipd config: %w", err)
	}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, fmt.Errorf("clipd log: %w", err)
	}
	d.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start clipd serve: %w", err)
	}
	go func() { _ = d.cmd.Wait(); logf.Close(); close(d.done) }()
	d.api = api.NewClient(d.socket)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var h map[string]any
		if err := d.call(ctx, http.MethodGet, "/v1/health", nil, &h); err == nil {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("clipd serve exited at start: %s", d.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("clipd serve did not answer /v1/health within 30s: %s", d.logTail())
		}
	}
}

func (d *daemon) stateDir() string { return filepath.Join(d.dir, "state") }

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// callTimeout bounds one API call of the benchmark.
const callTimeout = 10 * time.Minute

// call sends a JSON request and decodes a success answer into out.
func (d *daemon) call(ctx context.Context, method, path string, body any, out any) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var raw json.RawMessage
	if err := d.api.Do(ctx, method, path, body, &raw); err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// mountInfo is the part of the API's mount answer the benchmark uses.
type mountInfo struct {
	ID         string `json:"id"`
	Mountpoint string `json:"mountpoint"`
	PID        int    `json:"pid"` // the serving process, when the daemon reports it
	Bundle     string `json:"bundle"`
	Writable   bool   `json:"writable"`
	// IndexSource says where a mount by reference found its index:
	// "store", "registry" or "built".
	IndexSource string `json:"index_source"`
	Stats       struct {
		BytesFetched int64 `json:"bytes_fetched"`
		BytesRead    int64 `json:"bytes_read"`
		Requests     int64 `json:"requests"`
		// The prefetch figures (issue #11), nil from a clipd without
		// them; the API leaves zeros out (omitempty), so a clipd that has
		// them but did not prefetch also gives nil: see prefetch().
		PrefetchPlanned *int64 `json:"prefetch_planned"`
		PrefetchFetched *int64 `json:"prefetch_fetched"`
		PrefetchUsed    *int64 `json:"prefetch_used"`
		PrefetchWasted  *int64 `json:"prefetch_wasted"`
	} `json:"stats"`
}

// prefetch returns the mount's prefetch figures; known says the clipd
// measured reports them (withProfiles: it has the profile feature, so
// absent fields are zeros the API left out).
func (m mountInfo) prefetch(known bool) *bench.Prefetch {
	st := m.Stats
	if !known && st.PrefetchPlanned == nil && st.PrefetchFetched == nil {
		return nil
	}
	v := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}
	return &bench.Prefetch{Planned: v(st.PrefetchPlanned), Fetched: v(st.PrefetchFetched), Used: v(st.PrefetchUsed), Wasted: v(st.PrefetchWasted)}
}

// mount mounts archive (or, with image true, the image reference archive)
// at <mount root>/name, or, with bundle, writable at
// <mount root>/name/rootfs with an OCI runtime bundle in <mount root>/name:
// what a runtime asks for to run a container.
func (d *daemon) mount(ctx context.Context, archive, name string, image, bundle bool) (mountInfo, error) {
	var m mountInfo
	mp := filepath.Join(d.mountRoot, name)
	req := map[string]any{"archive": archive, "mountpoint": mp}
	if image {
		req = map[string]any{"image": archive, "mountpoint": mp}
	}
	if bundle {
		req["bundle"], req["mountpoint"], req["writable"] = mp, filepath.Join(mp, "rootfs"), true
	}
	err := d.call(ctx, http.MethodPost, "/v1/mounts", req, &m)
	return m, err
}

func (d *daemon) get(ctx context.Context, id string) (mountInfo, error) {
	var m mountInfo
	err := d.call(ctx, http.MethodGet, "/v1/mounts/"+id, nil, &m)
	return m, err
}

func (d *daemon) unmount(ctx context.Context, id string) error {
	return d.call(ctx, http.MethodDelete, "/v1/mounts/"+id, nil, nil)
}

// stop detaches whatever is still mounted, then stops the daemon.
func (d *daemon) stop() {
	for _, m := range mountsUnder(d.mountRoot) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// mountsUnder lists the mountpoints at or below root, deepest first.
func mountsUnder(root string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// run runs a setup command (not timed) and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
