package index

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The checkpoint windows of a gzip layer (one zstd-compressed 32 KiB window
// per span) are most of a .clip file's bytes: 2.1 of 3.4 MB for the
// debian-python image. A node needs a window only when it fetches the span
// that starts at it, so they can live in a blob of their own, the windows
// blob: the concatenated compressed windows of every layer, in layer and
// span order, addressed by its SHA-256. The .clip then holds, per span, the
// offset, length and SHA-256 of its window in that blob, and a reader
// fetches a window by range together with the span that needs it.
//
// The blob sits beside the .clip as FILE.clip.windows, and a publisher
// pushes it into the image's repository as a second blob of the index
// artifact (WindowsMediaType), where a node reads it by range.

// WindowsMediaType is the media type of a windows blob in a registry.
const WindowsMediaType = "application/vnd.clipd.index.windows.v1"

// WindowsSuffix is appended to a .clip file's path to name its windows file.
const WindowsSuffix = ".windows"

// Windows modes of WriteOptions.
const (
	WindowsInline   = "inline"   // windows inside the .clip (extension version 2)
	WindowsSeparate = "separate" // windows in FILE.clip.windows (version 3)
)

// Windows reads a windows blob by range. fetcher.Blob implementations (a
// local file, a registry blob) satisfy it.
type Windows interface {
	// ReadRange streams n bytes from off; fewer bytes is an error.
	ReadRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
}

// WindowsBlob names the windows blob of an archive whose decompression
// indexes keep their windows apart (SpanIndex.External).
type WindowsBlob struct {
	Digest string // "sha256:<hex>" of the whole blob
	Size   int64
	// Source reads the blob. Nil unless a caller sets it: the fetcher then
	// opens the file beside the archive (OpenWindowsFile), or else the
	// blob by digest in the image's repository.
	Source Windows

	// owner is the uid owning the .clip file the archive was opened from,
	// -1 when it was not opened from a file; path is that file's windows
	// file, fixed when it was opened (a serving process later points
	// Archive.Path at /proc/self/fd/N, which has no neighbours).
	owner int64
	path  string
}

// noteArchiveFile records what OpenFile knows about the file an archive
// came from, for OpenWindowsFile's checks.
func noteArchiveFile(a *Archive, fi os.FileInfo) {
	if a.Windows == nil {
		return
	}
	a.Windows.owner, a.Windows.path = -1, WindowsPath(a.Path)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		a.Windows.owner = int64(st.Uid)
	}
}

// WindowsPath is where the windows file of the .clip at path lives.
func WindowsPath(path string) string { return path + WindowsSuffix }

// OpenWindowsFile opens the windows file beside the archive's .clip file.
// The daemon opened the .clip with the rights of whoever asked for the
// mount, but this file is opened by path with the caller's own rights, so
// it must not let a peer read a file it could not read: the last component
// may not be a symlink, the file must be regular, of the recorded size, and
// owned by the owner of the .clip (a peer can only point at files of the
// owner of an index it could open; their contents are checked window by
// window against digests that owner wrote). An error wrapping
// fs.ErrNotExist means there is no such file.
func (a *Archive) OpenWindowsFile() (*os.File, error) {
	w := a.Windows
	if w == nil {
		return nil, errors.New("the archive has no windows blob")
	}
	path := w.path
	if path == "" {
		return nil, fmt.Errorf("windows %s: the archive was not read from a file: %w", w.Digest, os.ErrNotExist)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = errors.New("not a regular file")
	case st.Size != w.Size:
		err = fmt.Errorf("%d bytes, the index says %d", st.Size, w.Size)
	case w.owner >= 0 && int64(st.Uid) != w.owner:
		err = fmt.Errorf("owned by uid %d, the index by uid %d", st.Uid, w.owner)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("windows file %s: %w", path, err)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return f, nil
}

// ErrWindowDigest marks window bytes that do not match their digest.
var ErrWindowDigest = errors.New("window digest mismatch")

// VerifyWindow checks window, the bytes read for ref, against its digest.
func VerifyWindow(ref WindowRef, window []byte) error {
	if int64(len(window)) != ref.Length {
		return fmt.Errorf("%w: %d bytes, want %d", ErrWindowDigest, len(window), ref.Length)
	}
	if sha256.Sum256(window) != ref.Digest {
		return fmt.Errorf("%w: window at %d+%d", ErrWindowDigest, ref.Offset, ref.Length)
	}
	return nil
}

// splitWindows returns copies of a's layers whose decompression indexes
// refer to one windows blob instead of holding the windows, and that blob.
// Layers without an index, or with no window at all, are left as they are.
func splitWindows(a *Archive) ([]Layer, []byte, error) {
	layers := append([]Layer(nil), a.Layers...)
	var blob []byte
	for li := range layers {
		x := layers[li].Spans
		if x == nil || x.External() || x.WindowBytes() == 0 {
			continue
		}
		y := *x
		y.Spans = append(y.Spans[:0:0], x.Spans...)
		y.Refs = make([]WindowRef, len(x.Spans))
		for i := range y.Spans {
			w := y.Spans[i].Window
			if len(w) == 0 {
				continue
			}
			y.Refs[i] = WindowRef{Offset: int64(len(blob)), Length: int64(len(w)), Digest: sha256.Sum256(w)}
			blob = append(blob, w...)
			y.Spans[i].Window = nil
		}
		layers[li].Spans = &y
	}
	return layers, blob, nil
}

// checkRefs checks that every window x refers to lies inside the blob w.
func checkRefs(x *SpanIndex, w *extWindows) error {
	if w == nil {
		return errors.New("refers to a windows blob the extension does not name")
	}
	for i, r := range x.Refs {
		if r.Length > 0 && (r.Offset > w.Size || r.Length > w.Size-r.Offset) {
			return fmt.Errorf("span %d: window at %d+%d outside the windows blob of %d bytes", i, r.Offset, r.Length, w.Size)
		}
	}
	return nil
}

// checkBlobDigest accepts "sha256:" and 64 lowercase hex digits.
func checkBlobDigest(d string) error {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 || strings.ToLower(h) != h {
		return fmt.Errorf("digest %q is not sha256:<64 hex digits>", d)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return fmt.Errorf("digest %q is not sha256:<64 hex digits>", d)
	}
	return nil
}
