package daemon

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/internal/peeropen"
	"golang.org/x/sys/unix"
)

// identity is the file system identity the peer's files are opened with.
func (p Peer) identity() peeropen.Identity {
	return peeropen.Identity{UID: p.UID, GID: p.GID, Groups: p.Groups}
}

// openArchive opens the archive a peer named, with that peer's rights: a
// peer cannot mount (and so read through the mount) a file it could not
// read itself. The open file, not the path, is what gets mounted, so a
// path swapped after the check changes nothing. Root peers open as root.
func openArchive(p Peer, path string) (*os.File, error) {
	if !filepath.IsAbs(path) {
		return nil, badRequest("archive %q must be an absolute path", path)
	}
	f, err := peeropen.OpenRegular(p.identity(), path)
	var idErr *peeropen.IdentityError
	switch {
	case err == nil:
		return f, nil
	case errors.As(err, &idErr):
		return nil, err // a 500: the daemon could not take the peer's identity
	case errors.Is(err, peeropen.ErrNotRegular):
		// Only reachable by a peer that could open the path itself.
		return nil, badRequest("archive %s is not a regular file", path)
	case p.UID == 0 && errors.Is(err, unix.ENOENT):
		return nil, notFound("archive %s not found", path)
	case p.UID == 0:
		return nil, badRequest("archive %s: %v", path, err)
	default:
		// ENOENT, EACCES, ENOTDIR, ELOOP...: one answer, so that the
		// status says nothing about paths the peer cannot see.
		return nil, apiErr(http.StatusNotFound, api.CodeArchiveUnavailable,
			"archive %s: not found or not readable by uid %d", path, p.UID)
	}
}
