package mounter

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"golang.org/x/sys/unix"
)

// TestMountRefusedAfterFUSEMount: the registry access check runs beside
// the FUSE mount. A registry that refuses the credentials only after the
// filesystem is mounted (its 401 is held back) still fails the mount with
// ErrRegistryUnauthorized, and the filesystem is detached before Mount
// returns: nothing is left mounted on the mountpoint.
func TestMountRefusedAfterFUSEMount(t *testing.T) {
	for _, delay := range []time.Duration{0, 300 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			var heads atomic.Int32
			reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodHead {
					heads.Add(1)
					time.Sleep(delay)
				}
				w.Header().Set("WWW-Authenticate", `Basic realm="clipd-test"`)
				http.Error(w, "no", http.StatusUnauthorized)
			}))
			defer reg.Close()
			host := strings.TrimPrefix(reg.URL, "http://")
			clip, _ := fixture(t)
			a, err := index.Open(clip)
			if err != nil {
				t.Fatal(err)
			}
			a.Source = index.Source{Registry: host, Repository: "private/img", Reference: "v1"}
			a.Windows = nil
			remote := filepath.Join(t.TempDir(), "remote.clip")
			if err := index.WriteFile(remote, a); err != nil {
				t.Fatal(err)
			}
			m, err := New(Config{CacheDir: filepath.Join(t.TempDir(), "cache"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Fetcher: fetcher.Options{Insecure: []string{host}}})
			if err != nil {
				t.Fatal(err)
			}
			mp := t.TempDir()
			mt, err := m.Mount(context.Background(), daemon.MountRequest{Archive: remote, Mountpoint: mp})
			if err == nil {
				mt.Unmount(true)
				t.Fatal("mounted with a registry that refuses the credentials")
			}
			if !errors.Is(err, daemon.ErrRegistryUnauthorized) || !strings.Contains(err.Error(), host) {
				t.Errorf("error %v: want ErrRegistryUnauthorized naming %s", err, host)
			}
			if heads.Load() == 0 {
				t.Error("the registry was never asked")
			}
			var st, parent unix.Stat_t
			if err := unix.Stat(mp, &st); err != nil {
				t.Fatal(err)
			}
			if err := unix.Stat(filepath.Dir(mp), &parent); err != nil {
				t.Fatal(err)
			}
			if st.Dev != parent.Dev {
				_ = unix.Unmount(mp, unix.MNT_DETACH)
				t.Fatalf("a filesystem is left mounted on %s after the refusal", mp)
			}
		})
	}
}
