package systemd

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// UnderJournal reports whether stderr is connected to the journal
// (JOURNAL_STREAM names its device and inode).
func UnderJournal() bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		return false
	}
	return v == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// LogHandler returns clipd's log handler writing key=value lines to w. For
// the journal (journal true) each line starts with its syslog priority
// ("<3>" for errors...), so that `journalctl -p warning` filters, and has no
// timestamp: journald stamps every line itself.
func LogHandler(w io.Writer, level slog.Leveler, journal bool) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if !journal {
		return slog.NewTextHandler(w, opts)
	}
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	return slog.NewTextHandler(&priorityWriter{w: w}, opts)
}

// priorityWriter prefixes each record (one Write of the text handler, which
// starts with level=...) with its sd-daemon priority.
type priorityWriter struct{ w io.Writer }

func (p *priorityWriter) Write(b []byte) (int, error) {
	prio := "<6>"
	switch {
	case bytes.HasPrefix(b, []byte("level=ERROR")):
		prio = "<3>"
	case bytes.HasPrefix(b, []byte("level=WARN")):
		prio = "<4>"
	case bytes.HasPrefix(b, []byte("level=DEBUG")):
		prio = "<7>"
	}
	if _, err := io.WriteString(p.w, prio+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
