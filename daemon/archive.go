package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// errNotRegular marks an archive path that opened but is not a file.
var errNotRegular = errors.New("not a regular file")

// openArchive opens the archive a peer named, with that peer's rights: a
// peer cannot mount (and so read through the mount) a file it could not
// read itself. The open file, not the path, is what gets mounted, so a
// path swapped after the check changes nothing. Root peers open as root.
func openArchive(p Peer, path string) (*os.File, error) {
	if !filepath.IsAbs(path) {
		return nil, badRequest("archive %q must be an absolute path", path)
	}
	if p.UID == 0 {
		f, err := openRegular(path)
		switch {
		case err == nil:
			return f, nil
		case errors.Is(err, errNotRegular):
			return nil, badRequest("archive %s is not a regular file", path)
		case errors.Is(err, unix.ENOENT):
			return nil, notFound("archive %s not found", path)
		default:
			return nil, badRequest("archive %s: %v", path, err)
		}
	}
	f, err := asPeer(p, func() (*os.File, error) { return openRegular(path) })
	var idErr *identityError
	switch {
	case err == nil:
		return f, nil
	case errors.As(err, &idErr):
		return nil, err // a 500: the daemon could not take the peer's identity
	case errors.Is(err, errNotRegular):
		// Only reachable by a peer that could open the path itself.
		return nil, badRequest("archive %s is not a regular file", path)
	default:
		// ENOENT, EACCES, ENOTDIR, ELOOP...: one answer, so that the
		// status says nothing about paths the peer cannot see.
		return nil, apiErr(http.StatusNotFound, api.CodeArchiveUnavailable,
			"archive %s: not found or not readable by uid %d", path, p.UID)
	}
}

// openRegular opens path read-only and requires a regular file. O_NONBLOCK
// keeps a FIFO from blocking the open; O_NOCTTY keeps a terminal from
// becoming the daemon's.
func openRegular(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, errNotRegular
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// identityError is a failure to take a peer's identity (not the peer's
// fault): the request fails with a 500.
type identityError struct{ err error }

func (e *identityError) Error() string { return e.err.Error() }
func (e *identityError) Unwrap() error { return e.err }

// asPeer runs fn on an OS thread whose file system identity is the peer's:
// fsuid, fsgid and supplementary groups. These are per-thread credentials in
// Linux (the raw system calls, not the libc or Go wrappers that apply them
// to every thread), and leaving fsuid 0 drops the file capabilities
// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ...) from the thread's effective
// set, so the kernel checks every path component with the peer's rights.
// The goroutine locks its thread and never unlocks it: when it returns, the
// runtime ends the thread instead of reusing it with the peer's identity.
func asPeer(p Peer, fn func() (*os.File, error)) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := becomePeer(p); err != nil {
			ch <- result{err: &identityError{fmt.Errorf("open archive as uid %d gid %d: %w", p.UID, p.GID, err)}}
			return
		}
		f, err := fn()
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// becomePeer sets the calling thread's supplementary groups, fsgid and
// fsuid to the peer's; the caller has locked the thread for good.
func becomePeer(p Peer) error {
	groups := p.Groups
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); errno != 0 {
		return fmt.Errorf("setgroups: %w", errno)
	}
	// setfsuid and setfsgid report the previous value whatever happens;
	// asking again with an invalid id (-1) reads back what is in effect.
	unix.SetfsgidRetGid(int(p.GID))
	if got, _ := unix.SetfsgidRetGid(-1); got != int(p.GID) {
		return fmt.Errorf("setfsgid %d: fsgid is %d", p.GID, got)
	}
	unix.SetfsuidRetUid(int(p.UID))
	if got, _ := unix.SetfsuidRetUid(-1); got != int(p.UID) {
		return fmt.Errorf("setfsuid %d: fsuid is %d", p.UID, got)
	}
	return nil
}
