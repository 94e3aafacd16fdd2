package mounter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// A spare serving process (`clipd serve-mount --spare-fd N`) is started
// ahead of any request with everything that does not depend on one (the
// executable, cache, fetcher options, log level, limits, environment), and
// waits on its end of a SOCK_SEQPACKET socketpair. A mount request is one
// message: a SpareRequest in JSON, and its descriptors as SCM_RIGHTS.
// The process then goes on exactly like one exec'd with the same flags,
// which saves the fork/exec and Go start-up on the mount's path.

// SpareReady is what a spare writes on its socket once it can take a
// request: the daemon only hands requests to spares that said it.
const SpareReady = "ready"

// SpareRequest is the request-specific part of a serving process's
// options; the rest came with the spare's command line. Everything a
// serving process exec'd for the mount takes from its environment
// (MountpointFDEnv, PeerEnv) is here: a spare never reads those.
type SpareRequest struct {
	ID         string `json:"id"`
	Archive    string `json:"archive"`
	Mountpoint string `json:"mountpoint"`
	Control    string `json:"control"`
	Prefetch   bool   `json:"prefetch,omitempty"`
	Setuid     bool   `json:"setuid,omitempty"`
	// Peer is the identity of a non-root peer (peeropen); empty: root.
	Peer string `json:"peer,omitempty"`
	// The descriptors passed with the message are the report pipe's
	// write end, then, in this order, those flagged here.
	Dir         bool `json:"dir,omitempty"`
	ArchiveFile bool `json:"archive_file,omitempty"`
	Credentials bool `json:"credentials,omitempty"`
}

// SpareFDs are the descriptors received with a SpareRequest, -1 when
// absent; they are close-on-exec.
type SpareFDs struct{ Report, Dir, Archive, Auth int }

// ErrSpareReleased means the daemon's end of the socket closed without a
// request (the daemon stopped, died, or replaced the spare): the spare
// exits without doing anything.
var ErrSpareReleased = errors.New("spare serving process released without a request")

// maxSpareRequest bounds a request message: paths and ids only.
const maxSpareRequest = 64 << 10

// sendSpareRequest sends r and its descriptors (report first, then those r
// flags, in SpareRequest's order) in one message.
func sendSpareRequest(conn *net.UnixConn, r SpareRequest, files []*os.File) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode spare request: %w", err)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	n, oobn, err := conn.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	if err != nil {
		return fmt.Errorf("send request to spare serving process: %w", err)
	}
	if n != len(b) || oobn == 0 {
		return fmt.Errorf("send request to spare serving process: short write (%d of %d bytes)", n, len(b))
	}
	return nil
}

// ReceiveSpareRequest blocks until the daemon sends a request on fd, the
// spare's end of its socketpair. Anything but a well-formed request with
// the descriptors it announces is an error, and every descriptor received
// with it is closed: the spare then exits without mounting anything.
func ReceiveSpareRequest(fd int) (SpareRequest, SpareFDs, error) {
	none := SpareFDs{-1, -1, -1, -1}
	buf := make([]byte, maxSpareRequest)
	oob := make([]byte, unix.CmsgSpace(8*4))
	var n, oobn, flags int
	var err error
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return SpareRequest{}, none, fmt.Errorf("receive spare request: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return SpareRequest{}, none, fmt.Errorf("receive spare request: control message: %w", perr)
		}
		for _, m := range msgs {
			got, rerr := unix.ParseUnixRights(&m)
			fds = append(fds, got...)
			if rerr != nil {
				err = rerr
			}
		}
	}
	fail := func(format string, args ...any) (SpareRequest, SpareFDs, error) {
		for _, d := range fds {
			unix.Close(d)
		}
		return SpareRequest{}, none, fmt.Errorf("receive spare request: "+format, args...)
	}
	if err != nil {
		return fail("descriptors: %v", err)
	}
	if n == 0 && len(fds) == 0 {
		return SpareRequest{}, none, ErrSpareReleased
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return fail("message truncated")
	}
	var r SpareRequest
	dec := json.NewDecoder(bytes.NewReader(buf[:n]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return fail("not the JSON the daemon sends: %v", err)
	}
	if dec.More() {
		return fail("trailing data after the request")
	}
	if r.ID == "" || r.Archive == "" || r.Mountpoint == "" || r.Control == "" {
		return fail("id, archive, mountpoint and control are required")
	}
	want := 1
	for _, b := range []bool{r.Dir, r.ArchiveFile, r.Credentials} {
		if b {
			want++
		}
	}
	if len(fds) != want {
		return fail("%d descriptors, the request announces %d", len(fds), want)
	}
	got := none
	got.Report, fds = fds[0], fds[1:]
	take := func(flag bool, to *int) {
		if flag {
			*to, fds = fds[0], fds[1:]
		}
	}
	take(r.Dir, &got.Dir)
	take(r.ArchiveFile, &got.Archive)
	take(r.Credentials, &got.Auth)
	return r, got, nil
}
