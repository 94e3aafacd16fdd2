package fetcher

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// One line per layer and level per interval; the next line counts the
// lines held back.
func TestFaultLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	l := newFaultLog(slog.New(slog.NewTextHandler(&buf, nil)))
	l.every = 200 * time.Millisecond
	for range 3 {
		l.emit(slog.LevelWarn, "sha256:a", "registry fetch failed, retrying")
	}
	l.emit(slog.LevelError, "sha256:a", "registry fetch failed")
	l.emit(slog.LevelWarn, "sha256:b", "registry fetch failed, retrying")
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("%d lines, want one per layer and level:\n%s", n, buf.String())
	}
	time.Sleep(250 * time.Millisecond) // the interval under test
	buf.Reset()
	l.emit(slog.LevelWarn, "sha256:a", "registry fetch failed, retrying")
	if got := buf.String(); !strings.Contains(got, "layer=sha256:a") || !strings.Contains(got, "suppressed=2") {
		t.Fatalf("line after the interval: %q, want the layer and suppressed=2", got)
	}
}
