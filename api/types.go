package api

import "time"

// CreateMount is the body of POST /v1/mounts.
type CreateMount struct {
	// Exactly one of Archive (a .clip file) and Image (a registry
	// reference, HOST/REPO:TAG or HOST/REPO@sha256:...) names what to mount.
	Archive string `json:"archive,omitempty"`
	Image   string `json:"image,omitempty"`
	// Platform picks from a multi-platform image (OS/ARCH[/VARIANT]);
	// empty: the daemon's own.
	Platform string `json:"platform,omitempty"`
	// Auth are registry credentials for this mount only (the
	// X-Registry-Auth header is the other way to send them).
	Auth       *RegistryAuth `json:"auth,omitempty"`
	Mountpoint string        `json:"mountpoint"`
	Writable   bool          `json:"writable,omitempty"`
	Prefetch   bool          `json:"prefetch,omitempty"`
	// Setuid honours setuid/setgid bits in the mount (default nosuid); it
	// is refused under a mount root other users can traverse.
	Setuid bool `json:"setuid,omitempty"`
	// Bundle, an absolute directory under a mount root, asks for an OCI
	// runtime bundle there: config.json for the image's config with
	// root.path at the mountpoint (`runc run --bundle DIR ID`). Removed
	// with the mount.
	Bundle string `json:"bundle,omitempty"`
}

// ImageConfig is the part of the image's configuration a runtime uses, as
// the mounted index records it.
type ImageConfig struct {
	Entrypoint   []string `json:"entrypoint,omitempty"`
	Cmd          []string `json:"cmd,omitempty"`
	Env          []string `json:"env,omitempty"`
	WorkingDir   string   `json:"working_dir,omitempty"`
	User         string   `json:"user,omitempty"`
	OS           string   `json:"os,omitempty"`
	Architecture string   `json:"architecture,omitempty"`
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
	// ImageConfig is the image's config (entrypoint, cmd, env, user...).
	ImageConfig *ImageConfig `json:"image_config,omitempty"`
	// Bundle is the directory of the OCI runtime bundle written for this
	// mount ("" for none).
	Bundle string `json:"bundle,omitempty"`
	// Writable: an overlay whose upper and work directories are in
	// UpperDir ("upper", "work"), over the image's read-only mount at
	// Lower, which every writable mount of the image shares.
	Writable bool   `json:"writable,omitempty"`
	UpperDir string `json:"upper_dir,omitempty"`
	Lower    string `json:"lower,omitempty"`
	// Note says what an unmount left or did beyond the usual (an upper
	// directory kept, a serving process killed).
	Note string `json:"note,omitempty"`
	// ImageRef and ManifestDigest are set for a mount by image reference:
	// the reference asked for and the platform manifest it resolved to.
	ImageRef       string `json:"image_ref,omitempty"`
	ManifestDigest string `json:"manifest_digest,omitempty"`
	// IndexSource (in the answer of POST /v1/mounts by reference) says
	// where the index came from: "store", "registry" or "built".
	IndexSource string `json:"index_source,omitempty"`
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

// MountStats are the per-mount figures of the API, the metrics and a
// serving process's control socket (GET /v1/stats).
type MountStats struct {
	BytesFetched   int64 `json:"bytes_fetched"`    // bytes received from the registry
	CacheHits      int64 `json:"cache_hits"`       // span reads served from the cache
	CacheMisses    int64 `json:"cache_misses"`     // span reads that needed a fetch
	BytesFromCache int64 `json:"bytes_from_cache"` // bytes read from the cache
	ReadAheads     int64 `json:"read_aheads"`      // spans fetched ahead of reads
	Reads          int64 `json:"reads"`            // read requests from the kernel
	BytesRead      int64 `json:"bytes_read"`       // bytes returned to the kernel
	Requests       int64 `json:"requests"`         // blob requests made
	// ReadErrors counts reads answered with an error (EIO) and
	// FetchErrors span fetches that failed after their retries. LastError
	// is the cause of the latest read error, at LastErrorTime.
	ReadErrors    int64     `json:"read_errors"`
	FetchErrors   int64     `json:"fetch_errors"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	// Prefetch of a recorded profile: spans planned, spans fetched, spans
	// fetched then read by a demand read, spans fetched and not (yet)
	// read.
	PrefetchPlanned int64 `json:"prefetch_planned,omitempty"`
	PrefetchFetched int64 `json:"prefetch_fetched,omitempty"`
	PrefetchUsed    int64 `json:"prefetch_used,omitempty"`
	PrefetchWasted  int64 `json:"prefetch_wasted,omitempty"`
	// PrefetchCancelled counts replays stopped because the workload's
	// reads left the profile (fetcher/replay.go).
	PrefetchCancelled int64 `json:"prefetch_cancelled,omitempty"`
}

// Add returns the field-wise sum of s and o (host totals over mounts).
func (s MountStats) Add(o MountStats) MountStats {
	s.BytesFetched += o.BytesFetched
	s.CacheHits += o.CacheHits
	s.CacheMisses += o.CacheMisses
	s.BytesFromCache += o.BytesFromCache
	s.ReadAheads += o.ReadAheads
	s.Reads += o.Reads
	s.BytesRead += o.BytesRead
	s.Requests += o.Requests
	s.ReadErrors += o.ReadErrors
	s.FetchErrors += o.FetchErrors
	s.PrefetchPlanned += o.PrefetchPlanned
	s.PrefetchFetched += o.PrefetchFetched
	s.PrefetchUsed += o.PrefetchUsed
	s.PrefetchWasted += o.PrefetchWasted
	s.PrefetchCancelled += o.PrefetchCancelled
	if o.LastErrorTime.After(s.LastErrorTime) {
		s.LastError, s.LastErrorTime = o.LastError, o.LastErrorTime
	}
	return s
}
