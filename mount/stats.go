package mount

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Stats count what the kernel asked of one mount.
type Stats struct {
	Reads     int64 // read requests served
	BytesRead int64 // bytes returned to the kernel
	// ReadErrors counts reads answered with an error (EIO): a file of the
	// image could not be read. Interrupted reads do not count.
	ReadErrors int64
	// LastError is the cause of the latest read error and LastErrorTime
	// when it happened; empty and zero while there was none.
	LastError     string
	LastErrorTime time.Time
	// FirstRead is when the first read was answered with data; zero while
	// none was.
	FirstRead time.Time
}

// ReadObserver is told of every read request the kernel sent: how long it
// took and the errno it was answered with (0 for success).
type ReadObserver func(d time.Duration, errno syscall.Errno)

// readLogEvery bounds how often read failures are logged: a container
// retrying a broken file makes thousands of them a second, and the count
// and last cause are in the figures anyway.
const readLogEvery = 10 * time.Second

// readErrors is the error side of a mount's figures.
type readErrors struct {
	mu         sync.Mutex
	n          int64
	last       string
	at         time.Time
	firstRead  atomic.Int64 // unix nanoseconds; 0 until a read was served
	logged     time.Time    // when a failure was last logged
	suppressed int64        // failures not logged since
}

// failed records a read error; it returns whether to log it and how many
// failures went unlogged before it.
func (r *readErrors) failed(err error, now time.Time) (log bool, suppressed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if err == nil {
		err = errors.New("short read")
	}
	r.last, r.at = err.Error(), now
	if !r.logged.IsZero() && now.Sub(r.logged) < readLogEvery {
		r.suppressed++
		return false, 0
	}
	suppressed, r.suppressed, r.logged = r.suppressed, 0, now
	return true, suppressed
}

// served records the first read answered with data; after it, a load.
func (r *readErrors) served() {
	if r.firstRead.Load() == 0 {
		r.firstRead.CompareAndSwap(0, time.Now().UnixNano())
	}
}

func (r *readErrors) fill(st *Stats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.ReadErrors, st.LastError, st.LastErrorTime = r.n, r.last, r.at
	if ns := r.firstRead.Load(); ns != 0 {
		st.FirstRead = time.Unix(0, ns)
	}
}
