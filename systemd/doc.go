// Package systemd speaks systemd's service protocols for clipd: sd_notify
// (READY, STATUS, RELOADING, WATCHDOG, STOPPING) and socket activation
// (LISTEN_FDS). It also holds the unit files (clipd.service, clipd.socket),
// the tmpfiles.d and sysusers.d entries that `make install` installs. It
// contains no daemon logic: the daemon reports through the small Notifier
// type, and everything here is a no-op when clipd is not run by systemd.
package systemd
