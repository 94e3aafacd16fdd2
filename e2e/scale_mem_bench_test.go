package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/scaletree"
)

// scaleWalks is how many times BenchmarkMountScaleMemory walks each mount.
const scaleWalks = 4

// BenchmarkMountScaleMemory mounts the generated 100,000-file, 10-layer
// index of BenchmarkMountScale (scaletree.Archive) through a real daemon, and
// reads the serving process's memory once the mount is live, after `ls
// -lR` of the whole tree, which makes the kernel look up every entry (a
// container that walks its image does the same), and after scaleWalks of
// them. Issue #11 asks
// for at most 64 MiB resident; the figures are reported, not asserted.
// CLIPD_SCALE_CLIP names another .clip to measure instead, such as the
// index of bench's generated scale image (`clipd index
// oci-layout:DIR:scale` of what bench.GenerateScaleImage wrote):
//
//	go test ./e2e -run XXX -bench MountScaleMemory -benchtime 5x
func BenchmarkMountScaleMemory(b *testing.B) {
	requireE2ETools(b)
	if _, err := exec.LookPath("ls"); err != nil {
		b.Fatalf("ls: %v", err)
	}
	d := startDaemon(b)
	cleanupMounts(b, d)
	archive := os.Getenv("CLIPD_SCALE_CLIP")
	if archive == "" {
		archive = filepath.Join(b.TempDir(), "scale.clip")
		if err := index.WriteFile(archive, scaletree.Archive(100_000, 10)); err != nil {
			b.Fatal(err)
		}
	}
	a, err := index.Open(archive)
	if err != nil {
		b.Fatal(err)
	}
	nodes := len(a.Nodes)
	a = nil
	client := d.client()
	var mountHWM, mountRSS, walkHWM, walkRSS, walksHWM, walksRSS int64
	var mounts, walks []time.Duration
	n := 0
	for b.Loop() {
		n++
		took, info := timedMount(b, client, d, archive, fmt.Sprintf("m%d", n))
		mounts = append(mounts, took)
		h, r := procMemory(b, info.PID)
		mountHWM, mountRSS = max(mountHWM, h), max(mountRSS, r)

		// The first walk makes the kernel look up every entry; the later
		// ones are answered mostly from its caches, but each request
		// still leaves garbage in the serving process, which its
		// collector lets grow to the heap goal before it runs: the peak
		// of a mount in use is the VmHWM after several walks.
		for w := range scaleWalks {
			start := time.Now()
			cmd := exec.Command("ls", "-lR", info.Mountpoint)
			cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
			if err := cmd.Run(); err != nil {
				b.Fatalf("ls -lR %s: %v", info.Mountpoint, err)
			}
			h, r = procMemory(b, info.PID)
			if w == 0 {
				walks = append(walks, time.Since(start))
				walkHWM, walkRSS = max(walkHWM, h), max(walkRSS, r)
			}
		}
		walksHWM, walksRSS = max(walksHWM, h), max(walksRSS, r)
		unmountByID(b, client, info.ID)
	}
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	b.ReportMetric(mib(mountHWM), "mount-VmHWM-MiB")
	b.ReportMetric(mib(mountRSS), "mount-VmRSS-MiB")
	b.ReportMetric(mib(walkHWM), "lsR-VmHWM-MiB")
	b.ReportMetric(mib(walkRSS), "lsR-VmRSS-MiB")
	b.ReportMetric(mib(walksHWM), fmt.Sprintf("lsRx%d-VmHWM-MiB", scaleWalks))
	b.ReportMetric(mib(walksRSS), fmt.Sprintf("lsRx%d-VmRSS-MiB", scaleWalks))
	b.ReportMetric(ms(median(walks)), "lsR-ms")
	b.ReportMetric(ms(median(mounts)), "ms/mount")
	b.Logf("%d nodes; serving process after mount: VmHWM %d KiB, VmRSS %d KiB; after ls -lR: VmHWM %d KiB, VmRSS %d KiB; after %d: VmHWM %d KiB, VmRSS %d KiB; first ls -lR median %v of %v",
		nodes, mountHWM>>10, mountRSS>>10, walkHWM>>10, walkRSS>>10, scaleWalks, walksHWM>>10, walksRSS>>10, median(walks), walks)
}
