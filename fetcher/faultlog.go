package fetcher

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// faultLogEvery is the least time between two log lines of one level about
// the fetches of one layer: a registry that fails every span of a busy
// layer must not flood the journal.
const faultLogEvery = 10 * time.Second

// faultLog rate-limits the WARN (first retry) and ERROR (gave up) lines of
// registry fetches per layer and level, counting the lines it held back.
type faultLog struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	last map[faultKey]*faultState
}

type faultKey struct {
	layer string
	level slog.Level
}

type faultState struct {
	at         time.Time
	suppressed int
}

func newFaultLog(log *slog.Logger) *faultLog {
	return &faultLog{log: log, every: faultLogEvery, last: map[faultKey]*faultState{}}
}

// emit logs msg at level for layer unless a line of that level was logged
// for layer in the last interval; the next line says how many were held
// back in between.
func (l *faultLog) emit(level slog.Level, layer, msg string, args ...any) {
	now := time.Now()
	k := faultKey{layer, level}
	l.mu.Lock()
	st := l.last[k]
	if st == nil {
		st = &faultState{}
		l.last[k] = st
	} else if now.Sub(st.at) < l.every {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := st.suppressed
	st.at, st.suppressed = now, 0
	l.mu.Unlock()
	args = append([]any{"layer", layer}, args...)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(context.Background(), level, msg, args...)
}
