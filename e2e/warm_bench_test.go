package e2e

import (
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkWarm compares reads through a clipd mount whose disk cache holds
// every span with the same files extracted by umoci on local disk, in the
// same run. The kernel's page cache of the mount is dropped before every
// file is read (fadvise DONTNEED), so each read reaches clipd and is served
// from its cache; the native copy stays in the page cache, as the spans
// clipd reads do (fuse/native); fuse/native-cold compares with the native
// copy's page cache dropped as well. fuse-pagecache/native reads the mount
// again without dropping anything: files are opened with FOPEN_KEEP_CACHE,
// so a warm container reads from the kernel's page cache, as native does.
// Figures: MB/s of each side and the ratios of their times:
//
//	go test ./e2e -run XXX -bench Warm -benchtime 5x
func BenchmarkWarm(b *testing.B) {
	requireE2ETools(b)
	layoutDir, host := pushedDebianPython(b)
	d := startDaemon(b)
	archive := d.index(b, host+"/debian:python", filepath.Join(b.TempDir(), "python.clip"))
	_, mp := d.mount(b, archive, "python")
	native := umociUnpack(b, layoutDir, "python")

	var files []string
	var largest string
	var largestSize int64
	filepath.WalkDir(native, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			rel, _ := filepath.Rel(native, p)
			files = append(files, rel)
			if fi, err := de.Info(); err == nil && fi.Size() > largestSize {
				largest, largestSize = rel, fi.Size()
			}
		}
		return nil
	})
	// Warm clipd's cache (and the native copy's page cache).
	if _, err := readFiles(mp, files, true); err != nil {
		b.Fatal(err)
	}
	if _, err := readFiles(native, files, false); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d files; largest %s (%d bytes)", len(files), largest, largestSize)

	compare := func(b *testing.B, run func(root string, drop bool) (int64, error)) {
		var nat, natCold, fus, fusPC time.Duration
		var bytes int64
		for b.Loop() {
			start := time.Now()
			n, err := run(native, false)
			if err != nil {
				b.Fatal(err)
			}
			nat += time.Since(start)
			start = time.Now()
			if _, err := run(native, true); err != nil {
				b.Fatal(err)
			}
			natCold += time.Since(start)
			start = time.Now()
			if _, err := run(mp, true); err != nil {
				b.Fatal(err)
			}
			fus += time.Since(start)
			start = time.Now()
			if _, err := run(mp, false); err != nil {
				b.Fatal(err)
			}
			fusPC += time.Since(start)
			bytes += n
		}
		if bytes > 0 {
			b.ReportMetric(float64(bytes)/nat.Seconds()/1e6, "native-MB/s")
			b.ReportMetric(float64(bytes)/fus.Seconds()/1e6, "fuse-MB/s")
		}
		b.ReportMetric(nat.Seconds()/fus.Seconds(), "fuse/native")
		// The native copy with its page cache dropped too (read from disk).
		b.ReportMetric(natCold.Seconds()/fus.Seconds(), "fuse/native-cold")
		b.ReportMetric(nat.Seconds()/fusPC.Seconds(), "fuse-pagecache/native")
	}
	b.Run("seq-1MiB-largest", func(b *testing.B) {
		compare(b, func(root string, drop bool) (int64, error) { return readSeq(filepath.Join(root, largest), drop) })
	})
	b.Run("every-file", func(b *testing.B) {
		compare(b, func(root string, drop bool) (int64, error) { return readFiles(root, files, drop) })
	})
	b.Run("ls-lR", func(b *testing.B) {
		compare(b, func(root string, _ bool) (int64, error) {
			cmd := exec.Command("ls", "-lR", root)
			cmd.Stdout = io.Discard
			return 0, cmd.Run()
		})
	})
}

// readSeq reads path with 1 MiB reads, first dropping its page cache when
// drop is set.
func readSeq(path string, drop bool) (int64, error) {
	return readSeqBuf(path, drop, make([]byte, 1<<20))
}

func readSeqBuf(path string, drop bool, buf []byte) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if drop {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return 0, err
		}
	}
	var n int64
	for {
		k, err := f.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// readFiles reads every file (relative to root).
func readFiles(root string, files []string, drop bool) (int64, error) {
	var total int64
	buf := make([]byte, 1<<20)
	for _, rel := range files {
		n, err := readSeqBuf(filepath.Join(root, rel), drop, buf)
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}
