package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// applyLayer unpacks one layer (gzip, zstd or plain tar) onto root with the
// OCI rules that matter for running the image: whiteouts, opaque
// directories, hard links, symlinks, devices, owners, all 12 mode bits and
// mtimes. It trusts the image (no defence against symlinked parents that
// point outside root): the benchmark runs images it pushed itself.
func applyLayer(ctx context.Context, root string, r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(4)
	var src io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		defer gz.Close()
		src = gz
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		src = zr
	}
	tr := tar.NewReader(src)
	// Entries of this layer survive an opaque marker of their directory
	// even when the marker comes after them in the tar.
	thisLayer := map[string]bool{}
	var opaque []string
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("tar: %w", err)
		}
		name := path.Clean("/" + h.Name)
		dir, base := path.Split(name)
		switch {
		case base == ".wh..wh..opq":
			opaque = append(opaque, path.Clean(dir))
			continue
		case strings.HasPrefix(base, ".wh."):
			if err := os.RemoveAll(filepath.Join(root, dir, strings.TrimPrefix(base, ".wh."))); err != nil {
				return fmt.Errorf("whiteout %s: %w", name, err)
			}
			continue
		}
		if name == "/" {
			continue
		}
		thisLayer[name] = true
		if err := applyEntry(root, name, h, tr); err != nil {
			return err
		}
	}
	for _, d := range opaque {
		ents, err := os.ReadDir(filepath.Join(root, d))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("opaque %s: %w", d, err)
		}
		for _, e := range ents {
			if p := path.Join(d, e.Name()); !thisLayer[p] {
				if err := os.RemoveAll(filepath.Join(root, p)); err != nil {
					return fmt.Errorf("opaque %s: %w", d, err)
				}
			}
		}
	}
	return nil
}

func applyEntry(root, name string, h *tar.Header, r io.Reader) error {
	target := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("unpack %s: %w", name, err)
	}
	if fi, err := os.Lstat(target); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
		if err := os.RemoveAll(target); err != nil {
			return fmt.Errorf("unpack %s: replace: %w", name, err)
		}
	}
	mode := uint32(h.Mode & 0o7777)
	var err error
	switch h.Typeflag {
	case tar.TypeDir:
		err = os.Mkdir(target, 0o700)
		if errors.Is(err, fs.ErrExist) {
			err = nil
		}
	case tar.TypeReg:
		err = writeFile(target, r)
	case tar.TypeSymlink:
		err = os.Symlink(h.Linkname, target)
	case tar.TypeLink:
		err = os.Link(filepath.Join(root, path.Clean("/"+h.Linkname)), target)
	case tar.TypeChar:
		err = unix.Mknod(target, unix.S_IFCHR|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
	case tar.TypeBlock:
		err = unix.Mknod(target, unix.S_IFBLK|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
	case tar.TypeFifo:
		err = unix.Mkfifo(target, mode)
	default:
		return nil // pax/GNU metadata entries are consumed by archive/tar
	}
	if err != nil {
		return fmt.Errorf("unpack %s: %w", name, err)
	}
	if h.Typeflag == tar.TypeLink {
		return nil // shares the inode, and with it owner, mode and times
	}
	if err := os.Lchown(target, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("unpack %s: chown: %w", name, err)
	}
	if h.Typeflag != tar.TypeSymlink {
		// After chown, which clears setuid/setgid.
		if err := unix.Chmod(target, mode); err != nil {
			return fmt.Errorf("unpack %s: chmod: %w", name, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	if h.ModTime.IsZero() {
		t := unix.NsecToTimespec(time.Unix(0, 0).UnixNano())
		ts = []unix.Timespec{t, t}
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("unpack %s: times: %w", name, err)
	}
	return nil
}

func writeFile(target string, r io.Reader) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
