package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/clipd/clipd/api"
)

const helperEnv = "CLIPD_DAEMON_TEST_HELPER_SOCKET"

// TestMain lets the test binary act as an API client under another uid.
func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		_, err := api.NewClient(sock).Health(context.Background())
		var ae *api.Error
		switch {
		case err == nil:
			fmt.Println("ok")
		case errors.As(err, &ae):
			fmt.Printf("%d %s\n", ae.Status, ae.Message)
		default:
			fmt.Printf("error %v\n", err)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestAuthorize(t *testing.T) {
	cfg := DaemonConfig{AllowedUIDs: []uint32{1000}, AllowedGIDs: []uint32{50}}
	cases := []struct {
		peer Peer
		ok   bool
	}{
		{Peer{UID: 0, GID: 0, Known: true}, true},
		{Peer{UID: 0, GID: 1234, Known: true}, true},
		{Peer{UID: 1000, GID: 1000, Known: true}, true},
		{Peer{UID: 2000, GID: 50, Known: true}, true},
		{Peer{UID: 2000, GID: 2000, Known: true}, false},
		{Peer{UID: 0, Known: false}, false}, // credentials unknown: never assume root
	}
	for _, c := range cases {
		err := authorize(c.peer, cfg)
		if (err == nil) != c.ok {
			t.Errorf("authorize(%+v) = %v, want ok=%v", c.peer, err, c.ok)
		}
		if err != nil && c.peer.Known {
			wantAPIError(t, err, 403, api.CodeForbidden, fmt.Sprintf("uid %d", c.peer.UID))
		}
	}
}

// runAs runs the test binary as a client under uid/gid and returns its line.
func runAs(t *testing.T, bin, socket string, uid, gid uint32) string {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), helperEnv+"="+socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as uid %d: %v: %s", uid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestPeerCredentials drives the API from real processes: root, and
// nobody (65534) who may reach the socket through socket_group.
func TestPeerCredentials(t *testing.T) {
	const nobody = 65534
	h := newHarness(t)
	h.cfg.Daemon.SocketGroup = fmt.Sprint(nobody)
	// The helper must be able to reach the socket and run the binary.
	if err := os.Chmod(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(h.dir, "helper")
	copyFile(t, os.Args[0], bin, 0o755)
	h.start()

	fi, err := os.Stat(h.cfg.Daemon.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != nobody {
		t.Errorf("socket mode %v gid %d, want 0660 gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, nobody)
	}
	if got := runAs(t, bin, h.cfg.Daemon.Socket, 0, 0); got != "ok" {
		t.Errorf("root: %s", got)
	}
	if got := runAs(t, bin, h.cfg.Daemon.Socket, nobody, nobody); got != "403 uid 65534 (gid 65534) is not allowed to use clipd" {
		t.Errorf("nobody: %s", got)
	}
	if !strings.Contains(h.logs.String(), "status=403") || !strings.Contains(h.logs.String(), "peer_uid=65534") {
		t.Errorf("refusal not logged:\n%s", h.logs)
	}
	h.stop()

	h2 := newHarness(t)
	h2.cfg.Daemon.SocketGroup = fmt.Sprint(nobody)
	h2.cfg.Daemon.AllowedUIDs = []uint32{nobody}
	if err := os.Chmod(h2.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h2.start()
	if got := runAs(t, bin, h2.cfg.Daemon.Socket, nobody, nobody); got != "ok" {
		t.Errorf("allowed nobody: %s", got)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
