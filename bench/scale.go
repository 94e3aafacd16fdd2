package bench

// Scale is the scale part of a run: a generated image (GenerateScaleImage)
// indexed by clipd, mounted and walked. It is latest.json's "scale".
type Scale struct {
	Files        int     `json:"files"`     // regular files in the layers
	Dirs         int     `json:"dirs"`      // directory entries
	Symlinks     int     `json:"symlinks"`  // symbolic links
	Hardlinks    int     `json:"hardlinks"` // hard links (tar link entries)
	Layers       int     `json:"layers"`
	Uncompressed int64   `json:"uncompressed_bytes"` // regular file contents
	Compressed   int64   `json:"compressed_bytes"`   // gzip layers
	GenSeconds   float64 `json:"generate_seconds"`
	// IndexSeconds is `clipd index REF -o scale.clip` from the benchmark's
	// registry, unshaped (loopback); IndexBytes the .clip (and its windows).
	IndexSeconds float64 `json:"index_seconds"`
	IndexBytes   int64   `json:"index_bytes"`
	// MountSeconds are the mount requests (POST /v1/mounts to its answer),
	// one per fresh mount; each is unmounted before the next.
	MountSeconds []float64 `json:"mount_seconds"`
	// ServePID is the serving process measured; SeparateProcess says it is
	// not the daemon (RSS figures are then the mount's own).
	SeparateProcess bool `json:"separate_process"`
	// VmHWM / VmRSS of the serving process (/proc/PID/status), in bytes.
	HWMAfterMount int64 `json:"hwm_after_mount"`
	RSSAfterMount int64 `json:"rss_after_mount"`
	HWMAfterLs    int64 `json:"hwm_after_ls"`
	RSSAfterLs    int64 `json:"rss_after_ls"`
	// LsMountSeconds is the first `ls -lR` of a fresh mount, LsMountAgain a
	// second on the same mount; LsTreeSeconds the median `ls -lR` of the
	// extracted tree (just written: its metadata is in the kernel's caches).
	LsMountSeconds float64   `json:"ls_mount_seconds"`
	LsMountAgain   float64   `json:"ls_mount_again_seconds"`
	LsTreeSeconds  []float64 `json:"ls_tree_seconds"`
	ExtractSeconds float64   `json:"extract_seconds"`
	// Moved and Requests are what the registry sent while the mounts and
	// walks ran (metadata is in the index: expected 0).
	Moved    int64 `json:"bytes_moved"`
	Requests int64 `json:"requests"`
}

// Scale targets (issue #11).
const (
	ScaleMountTarget = 0.200    // seconds, median mount request
	ScaleRSSTarget   = 64 << 20 // bytes, serving process high-water mark
)

// ScaleTargets returns the scale part's targets.
func ScaleTargets(s Scale) []Target {
	mb := float64(1 << 20)
	hwm := max(s.HWMAfterMount, s.HWMAfterLs)
	return []Target{
		{Issue: "#11", What: "scale: median mount request (s)", Got: Median(s.MountSeconds), Max: ScaleMountTarget, Unit: " s", Measured: len(s.MountSeconds) > 0},
		{Issue: "#11", What: "scale: serving process VmHWM after mount and `ls -lR` (MiB)", Got: float64(hwm) / mb, Max: ScaleRSSTarget / mb, Unit: " MiB", Measured: hwm > 0},
	}
}
