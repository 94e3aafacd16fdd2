package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages to the socket named by NOTIFY_SOCKET.
// Without NOTIFY_SOCKET (not run by systemd, or Type=simple) every method is
// a no-op. The environment is left as is: processes clipd starts must be
// given an environment without it (see ChildEnv).
type Notifier struct {
	Log *slog.Logger // nil means slog.Default()
}

func (n Notifier) log() *slog.Logger {
	if n.Log != nil {
		return n.Log
	}
	return slog.Default()
}

// send delivers one datagram; a failure is logged, not returned: systemd
// being unreachable must not stop the daemon from serving.
func (n Notifier) send(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log().Warn("sd_notify failed", "state", state, "err", err)
	}
}

// Ready tells systemd that the service accepts requests (Type=notify ends
// its start job here), with a human-readable status line.
func (n Notifier) Ready(status string) { n.send(sd.SdNotifyReady + "\nSTATUS=" + status) }

// Status updates the line `systemctl status` shows.
func (n Notifier) Status(status string) { n.send("STATUS=" + status) }

// Reloading announces a configuration reload; Ready must follow. systemd
// wants the monotonic time with it so that it can match the two.
func (n Notifier) Reloading() {
	n.send(sd.SdNotifyReloading + "\n" + sd.SdNotifyMonotonicUsec())
}

// Stopping announces the shutdown.
func (n Notifier) Stopping() { n.send(sd.SdNotifyStopping + "\nSTATUS=stopping") }

// WatchdogInterval is half of WATCHDOG_USEC when the watchdog is enabled for
// this process, else 0: systemd recommends pinging at half the timeout.
func WatchdogInterval() (time.Duration, error) {
	d, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		return 0, fmt.Errorf("systemd watchdog: %w", err)
	}
	return d / 2, nil
}

// Watchdog sends WATCHDOG=1 every interval until ctx ends, as long as
// healthy returns nil: a wedged daemon stops pinging and systemd restarts
// it. A zero interval returns at once.
func (n Notifier) Watchdog(ctx context.Context, interval time.Duration, healthy func(context.Context) error) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, interval)
		err := healthy(hctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				n.log().Error("health check failed; not pinging the systemd watchdog", "err", err)
			}
			continue
		}
		n.send(sd.SdNotifyWatchdog)
	}
}
