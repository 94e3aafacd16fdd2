package mount

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAttributes(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	subdirs := map[string]uint64{"/": 3}
	for _, n := range f.a.Nodes {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mp, n.Path), &st); err != nil {
			t.Errorf("lstat %s: %v", n.Path, err)
			continue
		}
		if st.Mode != n.Attr.Mode {
			t.Errorf("%s: mode %#o, want %#o", n.Path, st.Mode, n.Attr.Mode)
		}
		if st.Ino != n.Attr.Ino {
			t.Errorf("%s: ino %d, want %d", n.Path, st.Ino, n.Attr.Ino)
		}
		if st.Uid != n.Attr.Uid || st.Gid != n.Attr.Gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", n.Path, st.Uid, st.Gid, n.Attr.Uid, n.Attr.Gid)
		}
		if uint64(st.Size) != n.Attr.Size {
			t.Errorf("%s: size %d, want %d", n.Path, st.Size, n.Attr.Size)
		}
		if st.Mtim.Sec != mtimeSec || st.Mtim.Nsec != mtimeNsec {
			t.Errorf("%s: mtime %d.%09d, want %d.%09d", n.Path, st.Mtim.Sec, st.Mtim.Nsec, mtimeSec, mtimeNsec)
		}
		if st.Ctim.Sec != mtimeSec+1 || st.Ctim.Nsec != 7 {
			t.Errorf("%s: ctime %d.%09d", n.Path, st.Ctim.Sec, st.Ctim.Nsec)
		}
		if st.Blksize != 4096 {
			t.Errorf("%s: blksize %d", n.Path, st.Blksize)
		}
		if wantBlocks := int64((n.Attr.Size + 4095) / 4096 * 8); st.Blocks != wantBlocks {
			t.Errorf("%s: blocks %d, want %d", n.Path, st.Blocks, wantBlocks)
		}
		wantNlink := uint64(1)
		switch {
		case n.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR:
			wantNlink = 2 + subdirs[n.Path]
		case n.Attr.Nlink != 0:
			wantNlink = uint64(n.Attr.Nlink)
		}
		if st.Nlink != wantNlink {
			t.Errorf("%s: nlink %d, want %d", n.Path, st.Nlink, wantNlink)
		}
	}

	var null, sda unix.Stat_t
	if err := unix.Lstat(mp+"/dev/null", &null); err != nil {
		t.Fatal(err)
	}
	if unix.Major(null.Rdev) != 1 || unix.Minor(null.Rdev) != 3 {
		t.Errorf("/dev/null rdev %d:%d, want 1:3", unix.Major(null.Rdev), unix.Minor(null.Rdev))
	}
	if err := unix.Lstat(mp+"/dev/sda", &sda); err != nil {
		t.Fatal(err)
	}
	if unix.Major(sda.Rdev) != 8 || unix.Minor(sda.Rdev) != 300 {
		t.Errorf("/dev/sda rdev %d:%d, want 8:300", unix.Major(sda.Rdev), unix.Minor(sda.Rdev))
	}

	var l1, l2 unix.Stat_t
	if err := unix.Stat(mp+"/link1", &l1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(mp+"/link2", &l2); err != nil {
		t.Fatal(err)
	}
	if l1.Ino != l2.Ino || l1.Nlink != 2 || l2.Nlink != 2 {
		t.Errorf("hard links: ino %d/%d nlink %d/%d, want one inode with nlink 2", l1.Ino, l2.Ino, l1.Nlink, l2.Nlink)
	}

	target, err := os.Readlink(mp + "/sym")
	if err != nil {
		t.Fatal(err)
	}
	if len(target) != 200 || target != f.byPath["/sym"].Target {
		t.Errorf("readlink: %d bytes %q", len(target), target)
	}
}

func TestReaddir(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	for dir, want := range map[string][]string{
		"/":    {"big", "bin", "broken", "dev", "empty", "link1", "link2", "secret", "small", "sym", "tmp", "zero"},
		"/dev": {"fifo", "null", "sda"},
		"/tmp": nil,
	} {
		ents, err := os.ReadDir(mp + dir)
		if err != nil {
			t.Fatalf("readdir %s: %v", dir, err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
			n := f.byPath[filepath.Join(dir, e.Name())]
			if uint32(e.Type()) != uint32(fileModeType(n.Attr.Mode)) {
				t.Errorf("%s/%s: dirent type %v", dir, e.Name(), e.Type())
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("readdir %s: %q, want %q", dir, got, want)
		}
	}
	// Raw getdents gives inode numbers too.
	fd, err := unix.Open(mp+"/dev", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	n, err := unix.Getdents(fd, buf)
	if err != nil {
		t.Fatal(err)
	}
	inos := map[string]uint64{}
	for b := buf[:n]; len(b) > 0; {
		reclen := int(b[16]) | int(b[17])<<8
		ino := uint64(0)
		for i := 7; i >= 0; i-- {
			ino = ino<<8 | uint64(b[i])
		}
		name := string(b[19:reclen])
		inos[strings.TrimRight(name, "\x00")] = ino
		b = b[reclen:]
	}
	if inos["null"] != 8 || inos["sda"] != 9 || inos["fifo"] != 7 {
		t.Errorf("getdents inode numbers %v", inos)
	}
}

func fileModeType(mode uint32) os.FileMode {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return os.ModeDir
	case syscall.S_IFLNK:
		return os.ModeSymlink
	case syscall.S_IFCHR:
		return os.ModeDevice | os.ModeCharDevice
	case syscall.S_IFBLK:
		return os.ModeDevice
	case syscall.S_IFIFO:
		return os.ModeNamedPipe
	case syscall.S_IFSOCK:
		return os.ModeSocket
	}
	return 0
}

func TestRead(t *testing.T) {
	f := newFixture(t)
	m, mp := mountFixture(t, f.a, f.layers, Options{})
	for _, p := range []string{"/small", "/empty", "/link1", "/link2", "/bin/su", "/secret", "/zero"} {
		got, err := os.ReadFile(mp + p)
		if err != nil {
			t.Errorf("read %s: %v", p, err)
			continue
		}
		if !bytes.Equal(got, f.content[p]) && !(len(got) == 0 && len(f.content[p]) == 0) {
			t.Errorf("read %s: %q, want %q", p, got, f.content[p])
		}
	}

	// The 3 MiB file, in odd-sized chunks.
	want := f.content["/big"]
	fh, err := os.Open(mp + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var got []byte
	sizes := []int{1, 4093, 77777, 131073, 3, 1 << 20}
	for i := 0; ; i++ {
		buf := make([]byte, sizes[i%len(sizes)])
		n, err := fh.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read /big at %d: %v", len(got), err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("/big: got %d bytes, differing from the %d written", len(got), len(want))
	}
	// Positioned reads across the end are short; past the end they are empty.
	buf := make([]byte, 1000)
	n, err := fh.ReadAt(buf, int64(len(want))-10)
	if n != 10 || err != io.EOF || !bytes.Equal(buf[:10], want[len(want)-10:]) {
		t.Errorf("read across EOF: n=%d err=%v", n, err)
	}
	if n, err := fh.ReadAt(buf, int64(len(want))+5); n != 0 || err != io.EOF {
		t.Errorf("read past EOF: n=%d err=%v", n, err)
	}

	st := m.Stats()
	if st.Reads == 0 || st.BytesRead < int64(len(want)) {
		t.Errorf("stats %+v after reading %d bytes of /big", st, len(want))
	}
}

func TestConcurrentReaders(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	want := f.content["/big"]
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			fh, err := os.Open(mp + "/big")
			if err != nil {
				errs <- err
				return
			}
			defer fh.Close()
			// Each reader walks the file with its own stride and start so
			// requests interleave.
			chunk := 10007 + g*3331
			buf := make([]byte, chunk)
			for off := (g * 65537) % len(want); off < len(want); off += chunk {
				n, err := fh.ReadAt(buf, int64(off))
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+n]) {
					errs <- fmt.Errorf("reader %d: wrong bytes at offset %d", g, off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestXattrs(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	small := mp + "/small"

	// Size probe, too small a buffer, exact buffer.
	sz, err := unix.Lgetxattr(small, "security.capability", nil)
	if err != nil || sz != len(capBlob) {
		t.Fatalf("probe security.capability: %d, %v", sz, err)
	}
	if _, err := unix.Lgetxattr(small, "security.capability", make([]byte, 3)); err != unix.ERANGE {
		t.Errorf("small buffer: %v, want ERANGE", err)
	}
	buf := make([]byte, sz)
	if n, err := unix.Lgetxattr(small, "security.capability", buf); err != nil || string(buf[:max(n, 0)]) != capBlob {
		t.Errorf("security.capability: %x, %v", buf[:max(n, 0)], err)
	}
	buf = make([]byte, 64)
	if n, err := unix.Lgetxattr(small, "user.foo", buf); err != nil || string(buf[:max(n, 0)]) != "bar" {
		t.Errorf("user.foo: %q, %v", buf[:max(n, 0)], err)
	}
	if _, err := unix.Lgetxattr(small, "user.absent", buf); err != unix.ENODATA {
		t.Errorf("absent xattr: %v, want ENODATA", err)
	}
	if _, err := unix.Lgetxattr(mp+"/empty", "user.foo", buf); err != unix.ENODATA {
		t.Errorf("file without xattrs: %v, want ENODATA", err)
	}

	sz, err = unix.Llistxattr(small, nil)
	wantList := "security.capability\x00user.foo\x00"
	if err != nil || sz != len(wantList) {
		t.Fatalf("probe list: %d, %v", sz, err)
	}
	if _, err := unix.Llistxattr(small, make([]byte, 5)); err != unix.ERANGE {
		t.Errorf("small list buffer: %v, want ERANGE", err)
	}
	buf = make([]byte, sz)
	if n, err := unix.Llistxattr(small, buf); err != nil || string(buf[:max(n, 0)]) != wantList {
		t.Errorf("list: %q, %v", buf[:max(n, 0)], err)
	}
	if n, err := unix.Llistxattr(mp+"/empty", nil); err != nil || n != 0 {
		t.Errorf("list of a file without xattrs: %d, %v", n, err)
	}

	// On the symlink itself, not its target. The kernel hides user.* on
	// anything but files and directories, so the link carries trusted.*.
	buf = make([]byte, 64)
	if n, err := unix.Lgetxattr(mp+"/sym", "trusted.on-link", buf); err != nil || string(buf[:max(n, 0)]) != "yes" {
		t.Errorf("symlink xattr: %q, %v", buf[:max(n, 0)], err)
	}
}

func TestStatfs(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	var total uint64
	seen := map[uint64]bool{}
	for _, n := range f.a.Nodes {
		if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG && !seen[n.Attr.Ino] {
			seen[n.Attr.Ino] = true
			total += n.Attr.Size
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mp+"/dev", &st); err != nil {
		t.Fatal(err)
	}
	if st.Bsize != 4096 || st.Blocks != (total+4095)/4096 || st.Bfree != 0 || st.Bavail != 0 ||
		st.Files != uint64(len(f.a.Nodes)) || st.Namelen != 255 {
		t.Errorf("statfs %+v; want %d blocks, %d files", st, (total+4095)/4096, len(f.a.Nodes))
	}
}

func TestReadOnly(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	checkReadOnly(t, mp)
}

// checkReadOnly tries every kind of change on mp and expects EROFS.
func checkReadOnly(t *testing.T, mp string) {
	t.Helper()
	checks := map[string]func() error{
		"write existing": func() error { return os.WriteFile(mp+"/small", []byte("x"), 0644) },
		"create":         func() error { return os.WriteFile(mp+"/new", []byte("x"), 0644) },
		"open rdwr": func() error {
			fh, err := os.OpenFile(mp+"/small", os.O_RDWR, 0)
			if err == nil {
				fh.Close()
			}
			return err
		},
		"unlink":   func() error { return os.Remove(mp + "/small") },
		"rmdir":    func() error { return os.Remove(mp + "/tmp") },
		"mkdir":    func() error { return os.Mkdir(mp+"/d", 0755) },
		"symlink":  func() error { return os.Symlink("x", mp+"/s") },
		"link":     func() error { return os.Link(mp+"/small", mp+"/l") },
		"rename":   func() error { return os.Rename(mp+"/small", mp+"/other") },
		"chmod":    func() error { return os.Chmod(mp+"/small", 0777) },
		"chown":    func() error { return os.Lchown(mp+"/small", 1, 1) },
		"truncate": func() error { return os.Truncate(mp+"/small", 0) },
		"mknod":    func() error { return unix.Mkfifo(mp+"/p", 0644) },
		"setxattr": func() error { return unix.Lsetxattr(mp+"/small", "user.x", []byte("y"), 0) },
		"rmxattr":  func() error { return unix.Lremovexattr(mp+"/small", "user.foo") },
		"utimes":   func() error { return unix.UtimesNano(mp+"/small", make([]unix.Timespec, 2)) },
	}
	for name, fn := range checks {
		if err := fn(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
	if _, err := os.Stat(mp + "/small"); err != nil {
		t.Errorf("/small after failed changes: %v", err)
	}
}

func TestReadErrorIsEIO(t *testing.T) {
	f := newFixture(t)
	log, logs := captureLog()
	_, mp := mountFixture(t, f.a, f.layers, Options{Logger: log})
	_, err := os.ReadFile(mp + "/broken")
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a file in a failing layer: %v, want EIO", err)
	}
	if got, err := os.ReadFile(mp + "/small"); err != nil || !bytes.Equal(got, f.content["/small"]) {
		t.Errorf("read /small after the failure: %q, %v", got, err)
	}
	out := logs.String()
	if !strings.Contains(out, `"path":"/broken"`) || !strings.Contains(out, `"layer":2`) || !strings.Contains(out, "registry unreachable") {
		t.Errorf("log does not name path, layer and cause:\n%s", out)
	}
}

func TestPermissionsForOtherUsers(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	// t.TempDir makes its directory 0700; other users must get to the mount.
	if err := os.Chmod(filepath.Dir(mp), 0755); err != nil {
		t.Fatal(err)
	}
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Fatalf("cat is needed: %v", err)
	}
	run := func(uid, gid uint32, p string) error {
		cmd := exec.Command(cat, mp+p)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(strings.TrimSpace(string(out)))
		}
		return nil
	}
	// allow_other lets another user in; default_permissions makes the
	// kernel apply the mode bits.
	if err := run(65534, 65534, "/big"); err != nil {
		t.Errorf("nobody reading a 0644 file: %v", err)
	}
	if err := run(65534, 65534, "/secret"); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("nobody reading a 0600 root file: %v, want permission denied", err)
	}
	if err := run(1000, 1001, "/small"); err != nil {
		t.Errorf("owner reading its 0640 file: %v", err)
	}
	if err := run(1002, 1001, "/small"); err != nil {
		t.Errorf("group member reading a 0640 file: %v", err)
	}
	if err := run(1002, 1002, "/small"); err == nil {
		t.Errorf("other user read a 0640 file")
	}
}

func TestMountOptions(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{FsName: "img@sha256:abc"})
	line := mountInfo(t, mp)
	if line == "" {
		t.Fatalf("%s not in mountinfo", mp)
	}
	// mountinfo: id parent maj:min root mountpoint mount-options [optional...] - fstype source super-options
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		t.Fatalf("bad mountinfo line %q", line)
	}
	mountOpts := strings.Split(strings.Fields(pre)[5], ",")
	tail := strings.Fields(post)
	superOpts := strings.Split(tail[2], ",")
	if !slices.Contains(mountOpts, "ro") || !slices.Contains(mountOpts, "nodev") || !slices.Contains(mountOpts, "nosuid") {
		t.Errorf("mount options %q, want ro,nodev,nosuid (setuid bits ignored by default)", mountOpts)
	}
	if tail[0] != "fuse.clipd" || tail[1] != "img@sha256:abc" {
		t.Errorf("fstype %q source %q", tail[0], tail[1])
	}
	if !slices.Contains(superOpts, "default_permissions") || !slices.Contains(superOpts, "allow_other") || !slices.Contains(superOpts, "ro") {
		t.Errorf("super options %q", superOpts)
	}

	// Asked for, setuid bits are honoured; still read-only and nodev.
	_, mp2 := mountFixture(t, f.a, f.layers, Options{Setuid: true})
	pre, _, _ = strings.Cut(mountInfo(t, mp2), " - ")
	if opts := strings.Split(strings.Fields(pre)[5], ","); !slices.Contains(opts, "ro") || !slices.Contains(opts, "nodev") ||
		slices.Contains(opts, "nosuid") {
		t.Errorf("setuid mount options %q, want ro,nodev without nosuid", opts)
	}
}

func TestUnmount(t *testing.T) {
	f := newFixture(t)
	m, mp := mountFixture(t, f.a, f.layers, Options{})
	if m.Mountpoint() != mp {
		t.Errorf("Mountpoint() = %q", m.Mountpoint())
	}
	if err := m.Unmount(false); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if line := mountInfo(t, mp); line != "" {
		t.Errorf("still mounted: %s", line)
	}
	m.Wait() // returns at once for an unmounted filesystem
	if err := m.Unmount(false); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
}

func TestForceUnmountWhileBusy(t *testing.T) {
	f := newFixture(t)
	m, mp := mountFixture(t, f.a, f.layers, Options{})
	fh, err := os.Open(mp + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	done := make(chan error, 1)
	go func() { done <- m.Unmount(true) }()

	// The mountpoint is detached at once although a file is open, and the
	// open file keeps working until closed.
	waitFor(t, func() bool { return mountInfo(t, mp) == "" })
	buf := make([]byte, 100)
	if _, err := fh.ReadAt(buf, 1<<20); err != nil {
		t.Errorf("read through a detached mount: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("forced Unmount returned (%v) while a file was open", err)
	default:
	}
	fh.Close()
	if err := <-done; err != nil {
		t.Errorf("forced Unmount: %v", err)
	}
	m.Wait()
}

// Remounted read-write by an operator, the tree must still not change.
func TestReadOnlyAfterRemountRW(t *testing.T) {
	f := newFixture(t)
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	if err := unix.Mount("", mp, "", unix.MS_REMOUNT|unix.MS_NODEV, ""); err != nil {
		t.Fatalf("remount rw: %v", err)
	}
	if line := mountInfo(t, mp); !strings.Contains(strings.Fields(line)[5], "rw") {
		t.Fatalf("not remounted read-write: %s", line)
	}
	checkReadOnly(t, mp)
}

// A normal unmount of a busy mount fails and leaves it working.
func TestUnmountBusy(t *testing.T) {
	f := newFixture(t)
	m, mp := mountFixture(t, f.a, f.layers, Options{})
	fh, err := os.Open(mp + "/small")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(false); err == nil {
		t.Fatal("Unmount of a busy mount succeeded")
	}
	if mountInfo(t, mp) == "" {
		t.Fatal("busy mount went away")
	}
	if got, err := io.ReadAll(fh); err != nil || !bytes.Equal(got, f.content["/small"]) {
		t.Errorf("read after failed unmount: %q, %v", got, err)
	}
	fh.Close()
	if err := m.Unmount(false); err != nil {
		t.Fatalf("Unmount after close: %v", err)
	}
	if line := mountInfo(t, mp); line != "" {
		t.Errorf("still mounted: %s", line)
	}
}
