package bundle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// maxUserFile bounds what is read of an image's /etc/passwd or /etc/group:
// the image is untrusted, and real files are a few KiB.
const maxUserFile = 4 << 20

// ReadUserFiles reads etc/passwd and etc/group of the root filesystem open
// at root. Paths are resolved as if root were "/" (RESOLVE_IN_ROOT): an
// image's symbolic link such as /etc/passwd -> /host/file stays inside the
// image. A missing file is nil, as runc treats it.
func ReadUserFiles(root *os.File) (passwd, group []byte, err error) {
	if passwd, err = readInRoot(root, "etc/passwd"); err != nil {
		return nil, nil, err
	}
	if group, err = readInRoot(root, "etc/group"); err != nil {
		return nil, nil, err
	}
	return passwd, group, nil
}

// ReadUserFilesAt is ReadUserFiles for a root filesystem given by path.
func ReadUserFilesAt(rootfs string) (passwd, group []byte, err error) {
	root, err := os.OpenFile(rootfs, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("bundle: open root filesystem: %w", err)
	}
	defer root.Close()
	return ReadUserFiles(root)
}

func readInRoot(root *os.File, name string) ([]byte, error) {
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	var fd int
	var err error
	for attempt := 0; ; attempt++ {
		fd, err = unix.Openat2(int(root.Fd()), name, how)
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) || attempt >= 8 {
			break
		}
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("bundle: open /%s in %s: %w", name, root.Name(), err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("bundle: stat /%s in %s: %w", name, root.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("bundle: /%s in %s is not a regular file", name, root.Name())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxUserFile+1))
	if err != nil {
		return nil, fmt.Errorf("bundle: read /%s in %s: %w", name, root.Name(), err)
	}
	if len(b) > maxUserFile {
		return nil, fmt.Errorf("bundle: /%s in %s is larger than %d bytes", name, root.Name(), maxUserFile)
	}
	return b, nil
}

// Written identifies the config.json WriteConfig made, so that whoever
// removes it later removes that file and not one put in its place.
type Written struct {
	Dev, Ino uint64
}

// WriteConfig writes s as config.json in the directory open at dir. The
// file is created, never replaced (O_EXCL) nor followed (O_NOFOLLOW), with
// mode 0600: the bundle may name users and env of the image. A partial file
// is removed.
func WriteConfig(dir *os.File, s *specs.Spec) (Written, error) {
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return Written{}, fmt.Errorf("bundle: encode %s: %w", ConfigFile, err)
	}
	fd, err := unix.Openat(int(dir.Fd()), ConfigFile,
		unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return Written{}, fmt.Errorf("bundle: create %s in %s: %w", ConfigFile, dir.Name(), err)
	}
	f := os.NewFile(uintptr(fd), ConfigFile)
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = unix.Unlinkat(int(dir.Fd()), ConfigFile, 0)
		return Written{}, fmt.Errorf("bundle: write %s in %s: %w", ConfigFile, dir.Name(), err)
	}
	return Written{Dev: st.Dev, Ino: st.Ino}, nil
}

// RemoveConfig removes the config.json of the directory open at dir if it
// is still the file w describes; it reports whether it did.
func RemoveConfig(dir *os.File, w Written) (bool, error) {
	var st unix.Stat_t
	err := unix.Fstatat(int(dir.Fd()), ConfigFile, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("bundle: stat %s in %s: %w", ConfigFile, dir.Name(), err)
	case st.Dev != w.Dev || st.Ino != w.Ino || st.Mode&unix.S_IFMT != unix.S_IFREG:
		return false, nil
	}
	if err := unix.Unlinkat(int(dir.Fd()), ConfigFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("bundle: remove %s in %s: %w", ConfigFile, dir.Name(), err)
	}
	return true, nil
}
