package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Contenders in the order the report lists them.
const (
	FullPull  = "full-pull"
	ClipV2    = "clip-v2"
	ClipdCold = "clipd-cold"
	ClipdWarm = "clipd-warm"
	// ClipdRefCold mounts by image reference on a daemon with an empty
	// state directory and cache: manifest, index artifact and spans are
	// all fetched through the shaper.
	ClipdRefCold = "clipd-ref-cold"
	// ClipdProfiled mounts the archive on a daemon with an empty cache whose
	// state directory holds the prefetch profile a previous run of the same
	// workload on the same image recorded: the mount replays it.
	ClipdProfiled = "clipd-profiled"
	// ClipdProfiledCross is ClipdProfiled with a profile recorded on another
	// workload (Run.ProfileFrom): what a profile costs when the container
	// does something else than the start it was recorded on.
	ClipdProfiledCross = "clipd-profiled-cross"
)

// Contenders returns every contender name of the main runs, in report
// order (ClipdProfiledCross has a section of its own).
func Contenders() []string {
	return []string{FullPull, ClipV2, ClipdCold, ClipdWarm, ClipdRefCold, ClipdProfiled}
}

// Workloads returns every workload name, in report order.
func Workloads() []string { return []string{"python-import", "runc", "ls-lR", "cat-5mb"} }

// Run is one measured cold start. The JSON names are the contract of
// bench/results/latest.json.
type Run struct {
	Profile    string  `json:"profile"`
	Contender  string  `json:"contender"`
	Workload   string  `json:"workload"`
	Seconds    float64 `json:"seconds"`     // mount request (or pull start) to workload exit
	BytesMoved int64   `json:"bytes_moved"` // response body bytes from the registry
	BytesRead  int64   `json:"bytes_read"`  // bytes the workload's processes read (rchar)
	Requests   int64   `json:"requests"`    // HTTP requests to the registry
	// IndexBytes (clipd-ref-cold only) is what the shaper sent before the
	// mount answer: the image manifest, the referrers lookup, the index
	// artifact's manifest and its first layer (the index fetched up front).
	IndexBytes int64 `json:"index_bytes,omitempty"`
	// Prefetch is the mount's prefetch figures (GET /v1/mounts/{id} after
	// the workload and after the registry traffic settled), on clipd runs
	// whose daemon reports them: planned 0 on a mount without a profile.
	Prefetch *Prefetch `json:"prefetch,omitempty"`
	// ProfileFrom (clipd-profiled, clipd-profiled-cross) is the workload
	// whose start recorded the profile the mount replayed.
	ProfileFrom string `json:"profile_from,omitempty"`
	// ProfileSpans (clipd-profiled, clipd-profiled-cross) is how many spans
	// the profile in the state directory held before the mount.
	ProfileSpans int `json:"profile_spans,omitempty"`
}

// Prefetch is a mount's prefetch figures, in spans (api.MountStats).
type Prefetch struct {
	Planned int64 `json:"planned"` // spans of the profile's plan
	Fetched int64 `json:"fetched"` // fetched by the prefetch
	Used    int64 `json:"used"`    // prefetched, then read by a demand read
	Wasted  int64 `json:"wasted"`  // fetched - used
}

// Results is bench/results/latest.json.
type Results struct {
	Commit string `json:"commit"`
	Runs   []Run  `json:"runs"`
	// Scale is the scale image's figures, when that part ran.
	Scale *Scale `json:"scale,omitempty"`
}

// WriteJSON writes r to path atomically (temp file and rename), so that a
// run interrupted while writing leaves the previous results in place.
func WriteJSON(path string, r Results) error {
	if r.Runs == nil {
		r.Runs = []Run{}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// ReadJSON reads a file WriteJSON wrote.
func ReadJSON(path string) (Results, error) {
	var r Results
	b, err := os.ReadFile(path)
	if err != nil {
		return r, fmt.Errorf("read results %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decode results %s: %w", path, err)
	}
	return r, nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Select returns the runs of one profile, contender and workload.
func (r Results) Select(profile, contender, workload string) []Run {
	var out []Run
	for _, x := range r.Runs {
		if x.Profile == profile && x.Contender == contender && x.Workload == workload {
			out = append(out, x)
		}
	}
	return out
}

// Median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Medians summarises runs.
type Medians struct {
	N                               int
	Seconds                         float64
	BytesMoved, BytesRead, Requests float64
	MinBytesMoved                   int64
	MaxSeconds                      float64
	// Prefetch medians over the runs that report prefetch figures
	// (PrefetchRuns of them).
	PrefetchRuns                           int
	Planned, PrefetchFetched, Used, Wasted float64
}

// Summarize returns the medians of runs.
func Summarize(runs []Run) Medians {
	m := Medians{N: len(runs)}
	var sec, moved, read, req []float64
	var planned, fetched, used, wasted []float64
	for i, r := range runs {
		if r.Prefetch != nil {
			planned = append(planned, float64(r.Prefetch.Planned))
			fetched = append(fetched, float64(r.Prefetch.Fetched))
			used = append(used, float64(r.Prefetch.Used))
			wasted = append(wasted, float64(r.Prefetch.Wasted))
		}
		m.MaxSeconds = max(m.MaxSeconds, r.Seconds)
		sec = append(sec, r.Seconds)
		moved = append(moved, float64(r.BytesMoved))
		read = append(read, float64(r.BytesRead))
		req = append(req, float64(r.Requests))
		if i == 0 || r.BytesMoved < m.MinBytesMoved {
			m.MinBytesMoved = r.BytesMoved
		}
	}
	m.Seconds, m.BytesMoved, m.BytesRead, m.Requests = Median(sec), Median(moved), Median(read), Median(req)
	m.PrefetchRuns = len(planned)
	m.Planned, m.PrefetchFetched, m.Used, m.Wasted = Median(planned), Median(fetched), Median(used), Median(wasted)
	return m
}
