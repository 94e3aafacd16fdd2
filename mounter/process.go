package mounter

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/daemon"
)

// procMount is a mount served by a serving process, seen from the daemon.
type procMount struct {
	id, mountpoint, control string
	pid                     int
	version                 string
	image                   json.RawMessage
	child                   *childProc // nil when adopted from a previous daemon
	client                  *controlClient
	log                     *slog.Logger
	roots                   func() []string // the mount roots, as configured now

	done    chan struct{}
	err     error // set before done closes
	stop    context.CancelFunc
	untrack func(ended bool)

	mu          sync.Mutex
	last        api.MountStats
	lastMetrics string // the exposition given with last (metrics.go)
}

var _ daemon.Mounted = (*procMount)(nil)

// finalStatsTimeout bounds the figures call before an unmount: a serving
// process slow to answer it leaves the unmount the rest of its deadline.
const finalStatsTimeout = 2 * time.Second

func (p *procMount) Process() daemon.ServingProcess {
	return daemon.ServingProcess{PID: p.pid, Control: p.control, Version: p.version}
}

func (p *procMount) Image() any { return p.image }

func (p *procMount) Done() <-chan struct{} { return p.done }

func (p *procMount) Err() error { return p.err }

// Stats asks the serving process; when it cannot answer within ctx, the
// last figures it gave stand.
func (p *procMount) Stats(ctx context.Context) api.MountStats {
	st, err := p.client.stats(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.log.Debug("figures of serving process", "err", err)
		return p.last
	}
	p.last, p.lastMetrics = st.MountStats, st.Metrics
	return st.MountStats
}

// Release stops following the serving process, which keeps serving.
func (p *procMount) Release() {
	p.stop()
	p.untrack(false)
	p.client.close()
}

func (p *procMount) lastStats() api.MountStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

func (p *procMount) alive() bool {
	if p.child != nil {
		select {
		case <-p.child.exited:
			return false
		default:
		}
	}
	return processAlive(p.pid)
}

// follow holds a /v1/wait call open on the serving process: it answers
// when the filesystem is gone, and breaks when the process dies.
func (p *procMount) follow(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for {
		err := p.client.wait(ctx)
		if ctx.Err() != nil {
			return // released
		}
		if err == nil {
			p.finish(nil)
			return
		}
		if !p.alive() {
			if rec, ok := readExitRecord(p.control); ok && rec.Reason == "unmounted" {
				p.finish(nil)
				return
			}
			cause := fmt.Errorf("%w: pid %d died", daemon.ErrServingProcessGone, p.pid)
			if p.child != nil {
				waitExit(p.child, time.Second)
				cause = fmt.Errorf("%w: pid %d died: %v", daemon.ErrServingProcessGone, p.pid, p.child.status())
			}
			p.finish(cause)
			return
		}
		// Dying, or briefly unreachable: look again.
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (p *procMount) finish(err error) {
	p.err = err
	os.Remove(exitPath(p.control))
	os.Remove(p.control)
	p.untrack(true)
	p.client.close()
	close(p.done)
}

// processAlive reports whether pid runs (a zombie does not: it serves
// nothing, and nobody may reap it for a while once orphaned).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	switch b[i+2] {
	case 'Z', 'X', 'x':
		return false
	}
	return true
}
