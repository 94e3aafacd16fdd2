package mounter

import (
	"errors"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// sparePair is a real SOCK_SEQPACKET socketpair as the Spawner makes it:
// the daemon's end as a conn, the spare's as a descriptor.
func sparePair(t *testing.T) (*net.UnixConn, int) {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(pair[0]), "daemon end")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fc.Close(); unix.Close(pair[1]) })
	return fc.(*net.UnixConn), pair[1]
}

// TestSpareRequestRoundTrip: what the daemon sends is what the spare
// reads, descriptors in their announced roles; a closed daemon end is a
// release, not an error.
func TestSpareRequestRoundTrip(t *testing.T) {
	conn, fd := sparePair(t)
	dir := t.TempDir()
	df, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	defer wr.Close()
	want := SpareRequest{ID: "m1", Archive: "/a.clip", Mountpoint: "/mnt/x", Control: "/run/x.sock", Prefetch: true, Peer: "1000:1000:"}
	sp := &spareProc{conn: conn}
	if err := startOnSpare(sp, want, wr, df, nil, nil); err != nil {
		t.Fatal(err)
	}
	got, fds, err := ReceiveSpareRequest(fd)
	if err != nil {
		t.Fatal(err)
	}
	want.Dir = true
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if fds.Archive != -1 || fds.Auth != -1 || fds.Report < 0 || fds.Dir < 0 {
		t.Fatalf("descriptors %+v", fds)
	}
	defer unix.Close(fds.Report)
	if d, err := DirFromFD(fds.Dir); err != nil {
		t.Errorf("mountpoint descriptor: %v", err)
	} else {
		d.Close()
	}
	if _, err := unix.Write(fds.Report, []byte("x")); err != nil {
		t.Errorf("report descriptor: %v", err)
	}
	b := make([]byte, 1)
	if n, _ := rd.Read(b); n != 1 {
		t.Error("report descriptor is not the pipe's write end")
	}
	if flags, err := unix.FcntlInt(uintptr(fds.Report), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received descriptor not close-on-exec: %v %v", flags, err)
	}
	// startOnSpare closed the daemon's end: the next read is a release.
	if _, _, err := ReceiveSpareRequest(fd); !errors.Is(err, ErrSpareReleased) {
		t.Errorf("after the daemon's end closed: %v, want ErrSpareReleased", err)
	}
}
