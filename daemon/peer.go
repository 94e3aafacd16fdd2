package daemon

import (
	"context"
	"net"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of an API connection, as the kernel
// reports it (SO_PEERCRED): it cannot be forged by the client.
type Peer struct {
	UID, GID uint32
	PID      int32
	// Groups are the peer's supplementary groups when it connected
	// (SO_PEERGROUPS); nil when the kernel could not tell.
	Groups []uint32
	Known  bool // false when the credentials could not be read
}

type peerKey struct{}

// peerContext is the http.Server ConnContext hook: it reads the peer's
// credentials once per connection.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, peerOf(c))
}

func peerOf(c net.Conn) Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}
	}
	var cred *unix.Ucred
	var credErr error
	var groups []uint32
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		groups = peerGroups(int(fd))
	}); err != nil || credErr != nil {
		return Peer{}
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Groups: groups, Known: true}
}

// maxPeerGroups is NGROUPS_MAX of Linux.
const maxPeerGroups = 65536

// peerGroups reads the supplementary groups the peer had when it connected
// (SO_PEERGROUPS, Linux 4.13): like SO_PEERCRED, recorded by the kernel and
// not forgeable. nil when unavailable; archives are then opened with the
// peer's uid and primary gid only, which can only grant less.
func peerGroups(fd int) []uint32 {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case errno == 0:
			return buf[:n/4]
		case errno == unix.ERANGE && n/4 > uint32(len(buf)) && n/4 <= maxPeerGroups:
			buf = make([]uint32, n/4) // n is the size the kernel needs
		default:
			return nil
		}
	}
}

func peerFrom(ctx context.Context) Peer {
	p, _ := ctx.Value(peerKey{}).(Peer)
	return p
}

// authorize allows root always, and other peers whose uid or primary gid is
// listed in the config. Supplementary groups are not consulted: the kernel
// does not hand them over with SO_PEERCRED.
func authorize(p Peer, cfg DaemonConfig) error {
	if !p.Known {
		return forbidden("peer credentials unavailable")
	}
	if p.UID == 0 || slices.Contains(cfg.AllowedUIDs, p.UID) || slices.Contains(cfg.AllowedGIDs, p.GID) {
		return nil
	}
	return forbidden("uid %d (gid %d) is not allowed to use clipd", p.UID, p.GID)
}
