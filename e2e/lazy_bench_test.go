package e2e

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// BenchmarkColdRead measures, each time with an empty cache, the wall time
// (mount request to workload exit) and the registry bytes of three
// workloads on debian-python:python, and a full pull (every layer blob
// downloaded and unpacked with tar) as the baseline of the same run:
//
//	go test ./e2e -run XXX -bench ColdRead -benchtime 3x
func BenchmarkColdRead(b *testing.B) {
	requireE2ETools(b)
	_, host := pushedDebianPython(b)
	proxy := testenv.StartCountingProxy(b, host)
	archive := startDaemon(b).index(b, proxy.Addr+"/debian:python", filepath.Join(b.TempDir(), "python.clip"))
	a, err := index.Open(archive)
	if err != nil {
		b.Fatal(err)
	}
	small, _ := smallFile(b, a)
	var imageBytes int64
	for _, l := range a.Layers {
		imageBytes += l.Size
	}

	workloads := []struct {
		name string
		run  func(mp string) error
	}{
		{"small-file", func(mp string) error { _, err := os.ReadFile(filepath.Join(mp, small.Path)); return err }},
		{"python-import-json", func(mp string) error {
			return exec.Command("chroot", mp, "/usr/bin/python3", "-c", "import json").Run()
		}},
		{"all-files", func(mp string) error { return readAll(mp) }},
	}
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) {
			var moved int64
			var wall time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				d := startDaemon(b)
				proxy.Reset()
				b.StartTimer()
				start := time.Now()
				id, mp := d.mount(b, archive, fmt.Sprint("m", i))
				if err := w.run(mp); err != nil {
					b.Fatalf("%s: %v", w.name, err)
				}
				wall += time.Since(start)
				b.StopTimer()
				moved += proxy.Bytes()
				d.umount(b, id, mp)
			}
			b.ReportMetric(float64(moved)/float64(b.N), "bytes-moved/op")
			b.ReportMetric(float64(moved)/float64(b.N)/float64(imageBytes)*100, "%-of-image")
			b.ReportMetric(wall.Seconds()/float64(b.N), "wall-s/op")
		})
	}
	b.Run("full-pull", func(b *testing.B) {
		var wall time.Duration
		var moved int64
		for i := 0; i < b.N; i++ {
			dir := b.TempDir()
			proxy.Reset()
			start := time.Now()
			for _, l := range a.Layers {
				if err := pullLayer(proxy.Addr, l.Digest, dir); err != nil {
					b.Fatal(err)
				}
			}
			wall += time.Since(start)
			moved += proxy.Bytes()
		}
		b.ReportMetric(float64(moved)/float64(b.N), "bytes-moved/op")
		b.ReportMetric(wall.Seconds()/float64(b.N), "wall-s/op")
	})
}

// pullLayer downloads one blob and unpacks it with tar, as a runtime without
// lazy loading does.
func pullLayer(registry, digest, dir string) error {
	resp, err := http.Get("http://" + registry + "/v2/debian/blobs/" + digest)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", digest, resp.Status)
	}
	tar := exec.Command("tar", "-xzf", "-", "-C", dir)
	tar.Stdin = resp.Body
	if out, err := tar.CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// readAll reads every regular file under root.
func readAll(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		_, err = os.ReadFile(p)
		return err
	})
}
