package mounter

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/peeropen"
)

// Image is the summary of a mounted image given in API answers.
type Image struct {
	Format       int      `json:"format"`
	Source       string   `json:"source"`
	Layers       int      `json:"layers"`
	Files        int      `json:"files"` // regular files
	Entries      int      `json:"entries"`
	Digest       string   `json:"digest,omitempty"`
	OS           string   `json:"os,omitempty"`
	Architecture string   `json:"architecture,omitempty"`
	Cmd          []string `json:"cmd,omitempty"`
	Entrypoint   []string `json:"entrypoint,omitempty"`
	Env          []string `json:"env,omitempty"`
	WorkingDir   string   `json:"working_dir,omitempty"`
	User         string   `json:"user,omitempty"`
}

func summarize(a *index.Archive) Image {
	img := Image{Format: a.Format, Source: sourceString(a.Source), Layers: len(a.Layers), Entries: len(a.Nodes)}
	for _, n := range a.Nodes {
		if n.Attr.Mode&0o170000 == 0o100000 {
			img.Files++
		}
	}
	img.Digest = a.Source.Manifest
	if i := a.Image; i != nil {
		if i.Digest != "" {
			img.Digest = i.Digest
		}
		img.OS, img.Architecture = i.OS, i.Architecture
		img.Cmd, img.Entrypoint, img.Env = i.Cmd, i.Entrypoint, i.Env
		img.WorkingDir, img.User = i.WorkingDir, i.User
	}
	return img
}

// sourceString names where the image's blobs live, as a user would write it.
func sourceString(s index.Source) string {
	if s.Layout != "" {
		if s.Reference != "" {
			return "oci-layout:" + s.Layout + ":" + s.Reference
		}
		return "oci-layout:" + s.Layout
	}
	if s.Repository == "" {
		return ""
	}
	ref := s.Repository
	if s.Registry != "" {
		ref = s.Registry + "/" + ref
	}
	switch {
	case s.Reference == "":
	case strings.Contains(s.Reference, ":"):
		ref += "@" + s.Reference
	default:
		ref += ":" + s.Reference
	}
	return ref
}

// openIndex opens the archive of req: from req.ArchiveFile when the daemon
// opened it with the requesting peer's rights (never reopening the path,
// which may have been swapped since), else from req.Archive.
func openIndex(req daemon.MountRequest) (*index.Archive, error) {
	if req.ArchiveFile == nil {
		return index.Open(req.Archive)
	}
	return index.OpenFile(req.ArchiveFile, req.Archive)
}

// blobPath is the path the fetcher opens to read a v1 archive's embedded
// data: when the archive came open, /proc/self/fd/N, which reopens that very
// inode whatever has become of the path.
func blobPath(req daemon.MountRequest) string {
	if req.ArchiveFile == nil {
		return req.Archive
	}
	return fmt.Sprintf("/proc/self/fd/%d", req.ArchiveFile.Fd())
}

// layoutOpener opens the blobs of the layout an archive names with the
// rights of as, the peer that asked for the mount: the archive is the
// peer's, so the layout directory and digests in it are too, and reading
// them as root would serve files the peer cannot read. Only regular files
// are opened (a FIFO or device named as a blob is refused). For a peer
// other than root every failure is one answer, ErrArchiveUnavailable, that
// does not tell a blob it cannot read from one that does not exist.
func layoutOpener(as peeropen.Identity) fetcher.OpenFunc {
	return func(path string) (*os.File, error) {
		f, err := peeropen.OpenRegular(as, path)
		var idErr *peeropen.IdentityError
		switch {
		case err == nil, as.Root(), errors.As(err, &idErr):
			return f, err
		default:
			return nil, unavailableError(fmt.Sprintf("layout blob %s: not found or not readable by uid %d", path, as.UID))
		}
	}
}

// unavailableError is a daemon.ErrArchiveUnavailable that does not repeat
// the sentinel's words in its message.
type unavailableError string

func (e unavailableError) Error() string        { return string(e) }
func (e unavailableError) Is(target error) bool { return target == daemon.ErrArchiveUnavailable }
