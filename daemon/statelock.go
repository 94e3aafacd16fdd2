package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFile is the file in daemon.state_dir whose flock marks the daemon that
// owns the state dir; it holds that daemon's pid.
const LockFile = "lock"

// StateDirLockedError is the refusal to start on a state dir another daemon
// owns. Two daemons on one mount table would adopt each other's mounts and
// unmount them when they stop.
type StateDirLockedError struct {
	Dir  string
	Lock string // the lock file
	PID  int    // the owner's pid; 0 when the lock file does not say
}

func (e *StateDirLockedError) Error() string {
	owner := "another clipd (pid unknown: the lock file is empty)"
	if e.PID > 0 {
		owner = fmt.Sprintf("another clipd, pid %d", e.PID)
	}
	return fmt.Sprintf("state dir %s is owned by %s, which holds the lock %s: stop it first, or give this daemon its own daemon.state_dir",
		e.Dir, owner, e.Lock)
}

// stateLock is the daemon's exclusive claim on its state dir. The flock
// lives with the open file, so it goes away with the process however that
// ends (a killed daemon leaves no stale lock for its successor).
type stateLock struct {
	f *os.File
}

// lockStateDir takes the lock of dir without waiting and writes this
// process's pid in it; a lock held elsewhere is a *StateDirLockedError.
func lockStateDir(dir string) (*stateLock, error) {
	p := filepath.Join(dir, LockFile)
	// os.OpenFile opens with O_CLOEXEC: serving processes must not inherit
	// the lock, or they would keep the state dir locked after the daemon
	// dies and its successor could not start.
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open state dir lock %s: %w", p, err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &StateDirLockedError{Dir: dir, Lock: p, PID: readLockPID(p)}
		}
		return nil, fmt.Errorf("lock state dir %s: %w", p, err)
	}
	// The pid is for the message of the daemon that is refused, and for
	// operators; the lock itself is the flock.
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write state dir lock %s: %w", p, err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write state dir lock %s: %w", p, err)
	}
	return &stateLock{f: f}, nil
}

// Close releases the lock. The file stays: removing it would let a daemon
// that opened the old file and one that creates a new one both "own" dir.
func (l *stateLock) Close() error { return l.f.Close() }

func flock(f *os.File, how int) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) {
		for {
			if ferr = unix.Flock(int(fd), how); ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// readLockPID returns the pid written in the lock file, 0 when there is none
// (the owner has locked but not yet written it).
func readLockPID(p string) int {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
