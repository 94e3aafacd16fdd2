package mounter

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/clipd/clipd/daemon"
)

// The control protocol between the daemon and a serving process: HTTP/1.1
// with JSON bodies on a Unix socket (mode 0600, in a 0700 directory under
// state_dir), so that a restarted daemon can find and drive the process
// again. Errors use the API's envelope (package api). The serving side is
// control_server.go, the daemon's side control_client.go; this file holds
// what both read and write.
//
//	GET  /v1/info        ControlInfo
//	GET  /v1/stats       controlStats: api.MountStats and Prometheus text
//	POST /v1/unmount     ?force=true; 409 with code "busy" when in use
//	GET  /v1/wait        answers once the filesystem is gone
//	PUT  /v1/log-level   {"level": "debug"}

// ControlInfo describes a serving process and its mount.
type ControlInfo struct {
	ID         string          `json:"id"`
	PID        int             `json:"pid"`
	Version    string          `json:"version"`
	Archive    string          `json:"archive"`
	Mountpoint string          `json:"mountpoint"`
	Started    time.Time       `json:"started"`
	Image      json.RawMessage `json:"image"`
}

// readyMsg is the one line a serving process writes on its report pipe:
// the mount is live, or why it could not be made.
type readyMsg struct {
	OK             bool            `json:"ok"`
	PID            int             `json:"pid"`
	Version        string          `json:"version,omitempty"`
	Image          json.RawMessage `json:"image,omitempty"`
	Error          string          `json:"error,omitempty"`
	InvalidArchive bool            `json:"invalid_archive,omitempty"`
	// ArchiveUnavailable: a file the archive names is not readable by
	// the requesting peer (daemon.ErrArchiveUnavailable).
	ArchiveUnavailable bool `json:"archive_unavailable,omitempty"`
	// MountpointMoved: the mountpoint was swapped while mounting
	// (daemon.ErrMountpointMoved).
	MountpointMoved bool `json:"mountpoint_moved,omitempty"`
	// RegistryUnauthorized: the registry of the archive's layers refused
	// access (daemon.ErrRegistryUnauthorized).
	RegistryUnauthorized bool `json:"registry_unauthorized,omitempty"`
}

// err is the Mount error a failure report stands for, keeping the
// sentinel that decides the API's answer.
func (m readyMsg) err() error {
	switch {
	case m.InvalidArchive:
		return fmt.Errorf("%w: %s", daemon.ErrInvalidArchive, m.Error)
	case m.ArchiveUnavailable:
		return fmt.Errorf("%w: %s", daemon.ErrArchiveUnavailable, m.Error)
	case m.MountpointMoved:
		return fmt.Errorf("%w: %s", daemon.ErrMountpointMoved, m.Error)
	case m.RegistryUnauthorized:
		return fmt.Errorf("%w: %s", daemon.ErrRegistryUnauthorized, m.Error)
	}
	return errors.New(m.Error)
}

// failure is the report of a Mount error: the message without the
// sentinel's prefix, and the flag that restores it.
func failure(pid int, version string, err error) readyMsg {
	m := readyMsg{PID: pid, Version: version, Error: err.Error()}
	for _, c := range []struct {
		sentinel error
		flag     *bool
	}{
		{daemon.ErrInvalidArchive, &m.InvalidArchive},
		{daemon.ErrArchiveUnavailable, &m.ArchiveUnavailable},
		{daemon.ErrMountpointMoved, &m.MountpointMoved},
		{daemon.ErrRegistryUnauthorized, &m.RegistryUnauthorized},
	} {
		if errors.Is(err, c.sentinel) {
			*c.flag = true
			m.Error = strings.TrimPrefix(m.Error, c.sentinel.Error()+": ")
			break
		}
	}
	return m
}

// exitRecord is left beside the control socket by a serving process whose
// filesystem was unmounted, so that a daemon that was down at the time can
// tell a clean end from a crash.
type exitRecord struct {
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

// exitPath is where the serving process of control leaves its exitRecord.
func exitPath(control string) string { return strings.TrimSuffix(control, ".sock") + ".exit" }

func readExitRecord(control string) (exitRecord, bool) {
	b, err := os.ReadFile(exitPath(control))
	if err != nil {
		return exitRecord{}, false
	}
	var r exitRecord
	if json.Unmarshal(b, &r) != nil {
		return exitRecord{}, false
	}
	return r, true
}
