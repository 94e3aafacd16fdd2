package daemon

import (
	"context"
	"net"
	"slices"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of an API connection, as the kernel
// reports it (SO_PEERCRED): it cannot be forged by the client.
type Peer struct {
	UID, GID uint32
	PID      int32
	Known    bool // false when the credentials could not be read
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
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return Peer{}
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Known: true}
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
