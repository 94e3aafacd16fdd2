package mounter

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveControl answers on a Unix socket with h, as a serving process would.
func serveControl(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestControlErrorOfOlderServingProcess: a serving process started by an
// older clipd answers {"error": "...", "busy": true}; after an upgrade the
// daemon must still see a busy refusal as EBUSY, with its message.
func TestControlErrorOfOlderServingProcess(t *testing.T) {
	sock := serveControl(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		io.WriteString(w, `{"error":"unmount /m: device or resource busy","busy":true}`+"\n")
	}))
	err := newControlClient(sock).unmount(context.Background(), false)
	if !errors.Is(err, unix.EBUSY) || !strings.HasPrefix(err.Error(), "unmount /m: device or resource busy") {
		t.Errorf("old busy answer: %v, want EBUSY with the message", err)
	}
}

// TestUnmountBoundedByContext: a serving process that takes the unmount
// call and never answers holds the daemon up only until the caller's
// deadline.
func TestUnmountBoundedByContext(t *testing.T) {
	sock := serveControl(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	p := &procMount{id: "x", mountpoint: "/nonexistent/mnt", control: sock, pid: os.Getpid(),
		client: newControlClient(sock), log: slog.New(slog.NewTextHandler(io.Discard, nil)), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.Unmount(ctx, false)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("unmount of a wedged serving process: %v, want the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("unmount returned after %s, want it bounded by its 200ms deadline", d)
	}
}
