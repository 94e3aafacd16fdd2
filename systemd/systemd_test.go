package systemd

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// notifySocket listens like systemd's notify socket and returns its path and
// the datagrams it receives.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return p, ch
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no sd_notify message within 5s")
		return ""
	}
}

func TestNotifier(t *testing.T) {
	sock, ch := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	var logs bytes.Buffer
	n := Notifier{Log: slog.New(slog.NewTextHandler(&logs, nil))}

	n.Ready("serving 2 mounts")
	if m := recv(t, ch); m != "READY=1\nSTATUS=serving 2 mounts" {
		t.Errorf("ready: %q", m)
	}
	n.Status("serving 3 mounts (1 failed)")
	if m := recv(t, ch); m != "STATUS=serving 3 mounts (1 failed)" {
		t.Errorf("status: %q", m)
	}
	n.Reloading()
	if m := recv(t, ch); !strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("reloading: %q", m)
	}
	n.Stopping()
	if m := recv(t, ch); m != "STOPPING=1\nSTATUS=stopping" {
		t.Errorf("stopping: %q", m)
	}
	// The environment stays for later messages, but not for children.
	if os.Getenv("NOTIFY_SOCKET") != sock {
		t.Error("NOTIFY_SOCKET removed")
	}
	env := ChildEnv([]string{"PATH=/bin", "NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=1", "WATCHDOG_PID=2", "LISTEN_FDS=1", "LISTEN_PID=3", "LISTEN_FDNAMES=x", "HOME=/root"})
	if strings.Join(env, " ") != "PATH=/bin HOME=/root" {
		t.Errorf("child env: %v", env)
	}
	// An unreachable socket is logged, never fatal.
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent.sock"))
	n.Status("x")
	if !strings.Contains(logs.String(), "sd_notify failed") {
		t.Errorf("failure not logged: %s", logs.String())
	}
	// Without NOTIFY_SOCKET nothing is sent and nothing logged.
	t.Setenv("NOTIFY_SOCKET", "")
	logs.Reset()
	n.Ready("x")
	if logs.Len() != 0 {
		t.Errorf("logged without NOTIFY_SOCKET: %s", logs.String())
	}
}

func TestWatchdog(t *testing.T) {
	sock, ch := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")
	iv, err := WatchdogInterval()
	if err != nil || iv != 50*time.Millisecond {
		t.Fatalf("interval %v %v, want half of WATCHDOG_USEC", iv, err)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if iv, _ := WatchdogInterval(); iv != 0 {
		t.Errorf("watchdog meant for pid 1 taken: %v", iv)
	}

	healthy := make(chan bool, 1)
	healthy <- true
	var unhealthyChecks atomic.Int32
	check := func(context.Context) error {
		ok := <-healthy
		healthy <- ok
		if !ok {
			unhealthyChecks.Add(1)
			return os.ErrDeadlineExceeded
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Notifier{}.Watchdog(ctx, 20*time.Millisecond, check); close(done) }()
	for range 3 {
		if m := recv(t, ch); m != "WATCHDOG=1" {
			t.Fatalf("watchdog: %q", m)
		}
	}
	// An unhealthy daemon stops pinging. Once three checks have failed, a
	// marker sent to the socket follows every ping sent after the first
	// failed check (datagrams keep their order): before it, only the ping of
	// the last healthy check may still arrive.
	<-healthy
	healthy <- false
	for deadline := time.Now().Add(5 * time.Second); unhealthyChecks.Load() < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("%d unhealthy checks in 5s, want 3", unhealthyChecks.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	mark, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mark.Write([]byte("MARKER")); err != nil {
		t.Fatal(err)
	}
	mark.Close()
	pings := 0
	for m := recv(t, ch); m != "MARKER"; m = recv(t, ch) {
		pings++
	}
	if pings > 1 {
		t.Errorf("%d pings while unhealthy, want none after the first failed check", pings-1)
	}
	cancel()
	<-done
}

// TestListenerSocketActivation runs this test binary under
// systemd-socket-activate, which passes the listening socket the way
// systemd does (LISTEN_FDS, LISTEN_PID) once the first client connects.
func TestListenerSocketActivation(t *testing.T) {
	if os.Getenv("CLIPD_ACTIVATION_HELPER") == "1" {
		activationHelper()
		return
	}
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatalf("systemd-socket-activate (package systemd) is needed: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmd := exec.Command(tool, "-l", sock, "-E", "CLIPD_ACTIVATION_HELPER=1",
		os.Args[0], "-test.run=^TestListenerSocketActivation$")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var c net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s never listened: %v\n%s", sock, err, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from the activated helper: %v\n%s", err, out.String())
	}
	if want := "activated unix " + sock + " env=\n"; line != want {
		t.Errorf("helper said %q, want %q", line, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("helper: %v\n%s", err, out.String())
	}
}

// activationHelper serves one connection on the passed socket and says what
// it got; LISTEN_* must be gone from its environment afterwards.
func activationHelper() {
	ln, err := Listener()
	if err != nil || ln == nil {
		os.Stderr.WriteString("no socket passed\n")
		os.Exit(2)
	}
	c, err := ln.Accept()
	if err != nil {
		os.Exit(3)
	}
	c.Write([]byte("activated " + ln.Addr().Network() + " " + ln.Addr().String() + " env=" + os.Getenv("LISTEN_FDS") + os.Getenv("LISTEN_PID") + "\n"))
	c.Close()
	// A second call finds nothing: the variables are gone.
	if again, _ := Listener(); again != nil {
		os.Exit(4)
	}
	os.Exit(0)
}

func TestListenerWithoutActivation(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("LISTEN_PID", "")
	ln, err := Listener()
	if ln != nil || err != nil {
		t.Errorf("got %v %v, want nothing", ln, err)
	}
	// LISTEN_PID naming another process is not for us.
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	if ln, err := Listener(); ln != nil || err != nil {
		t.Errorf("took sockets meant for pid 1: %v %v", ln, err)
	}
}

func TestLogHandlerJournal(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(LogHandler(&b, slog.LevelDebug, true))
	log.Error("broke", "id", "x")
	log.Warn("hmm")
	log.Info("fine")
	log.Debug("detail")
	want := "<3>level=ERROR msg=broke id=x\n<4>level=WARN msg=hmm\n<6>level=INFO msg=fine\n<7>level=DEBUG msg=detail\n"
	if b.String() != want {
		t.Errorf("journal lines:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	slog.New(LogHandler(&b, slog.LevelInfo, false)).Info("plain")
	if !strings.HasPrefix(b.String(), "time=") || !strings.Contains(b.String(), "level=INFO msg=plain") {
		t.Errorf("plain line: %q", b.String())
	}
	t.Setenv("JOURNAL_STREAM", "1:2")
	if UnderJournal() {
		t.Error("JOURNAL_STREAM naming another file taken as the journal")
	}
}
