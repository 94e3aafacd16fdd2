package systemd

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
)

// Listener returns the stream socket systemd passed (LISTEN_FDS, clipd.socket)
// or nil when clipd was not socket-activated. The LISTEN_* variables are
// removed from the environment and the descriptor is close-on-exec, so that
// serving processes neither inherit the API socket nor believe they were
// activated themselves. More than one socket is an error: clipd serves one.
func Listener() (net.Listener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	if len(files) > 1 {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("socket activation: %d sockets passed, clipd listens on one", len(files))
	}
	ln, err := net.FileListener(files[0])
	files[0].Close() // FileListener dups it
	if err != nil {
		return nil, fmt.Errorf("socket activation: fd 3 is not a listening socket: %w", err)
	}
	if ln.Addr().Network() != "unix" {
		ln.Close()
		return nil, fmt.Errorf("socket activation: passed a %s socket, want a Unix stream socket", ln.Addr().Network())
	}
	return ln, nil
}

// ChildEnv returns env without the variables through which systemd talks to
// this process (notify socket, watchdog, passed sockets): processes clipd
// starts are not the service's main process.
func ChildEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Environ is ChildEnv(os.Environ()).
func Environ() []string { return ChildEnv(os.Environ()) }
