package daemon

import "time"

// CreateMount is the body of POST /v1/mounts.
type CreateMount struct {
	Archive    string `json:"archive"`
	Mountpoint string `json:"mountpoint"`
	Writable   bool   `json:"writable,omitempty"`
	Prefetch   bool   `json:"prefetch,omitempty"`
	// Setuid honours setuid/setgid bits in the mount (default nosuid); it
	// is refused under a mount root other users can traverse.
	Setuid bool `json:"setuid,omitempty"`
}

// MountInfo describes one mount in API answers.
type MountInfo struct {
	ID         string     `json:"id"`
	Mountpoint string     `json:"mountpoint"`
	Archive    string     `json:"archive"`
	Created    time.Time  `json:"created"`
	Image      any        `json:"image"`
	Stats      MountStats `json:"stats"`
	// State is "active" or "failed" (the serving process died; Error says
	// how). A failed mount stays listed until it is deleted.
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// PID and Version identify the process serving the filesystem.
	PID     int    `json:"pid"`
	Version string `json:"version,omitempty"`
	// Setuid: setuid/setgid bits are honoured (mounted without nosuid).
	Setuid bool `json:"setuid"`
}

// Mount states.
const (
	MountActive = "active"
	MountFailed = "failed"
)

// Health is the answer of GET /v1/health.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version"`
	Mounts  int    `json:"mounts"`
	Failed  int    `json:"failed"` // mounts in state "failed", counted in Mounts
}

// errorBody is the envelope of every error answer.
type errorBody struct {
	Error APIError `json:"error"`
}
