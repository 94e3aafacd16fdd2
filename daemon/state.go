package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// StateFile is the name of the mount table in daemon.state_dir.
const StateFile = "mounts.json"

// StateEntry is one persisted mount, enough for an operator or a restarted
// daemon to see what was mounted and by whom.
type StateEntry struct {
	ID         string    `json:"id"`
	Archive    string    `json:"archive"`
	Mountpoint string    `json:"mountpoint"`
	Created    time.Time `json:"created"`
	PID        int       `json:"pid"` // process serving the filesystem
	// Control is the serving process's control socket ("" when the
	// filesystem was served inside the daemon).
	Control string `json:"control,omitempty"`
	// Version of the binary serving the filesystem.
	Version string `json:"version,omitempty"`
	// State is api.MountActive ("" in older tables) or api.MountFailed, with the
	// cause in Error.
	State string `json:"state,omitempty"`
	Error string `json:"error,omitempty"`
	// Setuid: mounted without nosuid, on request.
	Setuid bool `json:"setuid,omitempty"`
	// Bundle: the OCI runtime bundle written for the mount (bundle.go).
	Bundle *BundleState `json:"bundle,omitempty"`
	// Writable: an overlay at Mountpoint over the shared read-only mount
	// at Lower (served by PID, Control), with its upper and work
	// directories in UpperDir. The writable entries naming one Lower are
	// its users: the last one to go unmounts it.
	Writable bool   `json:"writable,omitempty"`
	UpperDir string `json:"upper_dir,omitempty"`
	Lower    string `json:"lower,omitempty"`
	// ImageRef and ManifestDigest: mounted by image reference (Archive is
	// then its index in the store).
	ImageRef       string `json:"image_ref,omitempty"`
	ManifestDigest string `json:"manifest_digest,omitempty"`
}

type stateDoc struct {
	Version int          `json:"version"`
	Mounts  []StateEntry `json:"mounts"`
}

// ReadState reads the mount table in dir; a missing file is an empty table.
func ReadState(dir string) ([]StateEntry, error) {
	p := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", p, err)
	}
	var doc stateDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", p, err)
	}
	return doc.Mounts, nil
}

// writeState replaces the mount table atomically: a crash leaves either the
// old or the new table, never a torn one.
func writeState(dir string, entries []StateEntry) error {
	p := filepath.Join(dir, StateFile)
	if entries == nil {
		entries = []StateEntry{}
	}
	b, err := json.MarshalIndent(stateDoc{Version: 1, Mounts: entries}, "", "  ")
	if err != nil {
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	tmp, err := os.CreateTemp(dir, ".mounts-*.json")
	if err != nil {
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("write mount table %s: %w", p, err)
	}
	if d, err := os.Open(dir); err == nil {
		// Make the rename itself durable.
		_ = d.Sync()
		d.Close()
	}
	return nil
}
