package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/profile"
)

// BenchmarkMountByReferenceProfile measures what a profile artifact in the
// registry adds to a cold mount by reference of debian-python: the same
// image in two repositories, one with a pushed profile, mounted in turn by
// one daemon whose index store and profile store are emptied before each
// mount (so each mount lists the referrers, fetches the index and, for
// one repository, the profile). Figures: median mount request time and
// requests per mount of each, through a counting proxy:
//
//	go test ./e2e -run XXX -bench MountByReferenceProfile -benchtime 10x
func BenchmarkMountByReferenceProfile(b *testing.B) {
	requireE2ETools(b)
	layout := testenv.DebianPythonLayout(b)
	host := testenv.StartRegistry(b)
	proxy := testenv.StartCountingProxy(b, host)
	plain, profiled := "/plain/debian:python", "/profiled/debian:python"
	for _, r := range []string{plain, profiled} {
		testenv.PushLayout(b, layout, "python", host+r)
		runEnv(b, nil, clipdBin(b), "index", "--push", proxy.Addr+r)
	}
	d := startDaemon(b)
	cleanupMounts(b, d)

	// A profile to push: 40 spans of the stored index (the issue's
	// python-import touches 34).
	st, ans, mp := d.mountRef(b, "seed", map[string]any{"image": proxy.Addr + profiled}, nil)
	if st != http.StatusCreated {
		b.Fatalf("mount: %d %v", st, ans)
	}
	manifest := ans["manifest_digest"].(string)
	d.umount(b, ans["id"].(string), mp)
	store, err := profile.Open(filepath.Join(d.stateDir(), profile.Dir))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := store.Merge(syntheticRecording(manifest, d.storedArchive(b, manifest), 40)); err != nil {
		b.Fatal(err)
	}
	runEnv(b, nil, clipdBin(b), "profile", "push", "--config", d.config, proxy.Addr+profiled)

	reset := func() {
		d.clipd(b, "images", "prune")
		if err := os.Remove(d.profilePath(manifest)); err != nil && !os.IsNotExist(err) {
			b.Fatal(err)
		}
		proxy.Reset()
	}
	var times [2][]time.Duration
	var reqs [2]int64
	b.ResetTimer()
	for range b.N {
		for i, r := range []string{plain, profiled} {
			b.StopTimer()
			reset()
			b.StartTimer()
			start := time.Now()
			st, ans, mp := d.mountRef(b, "python", map[string]any{"image": proxy.Addr + r}, nil)
			times[i] = append(times[i], time.Since(start))
			b.StopTimer()
			reqs[i] += proxy.Requests()
			if st != http.StatusCreated || ans["index_source"] != "registry" {
				b.Fatalf("mount %s: %d %v", r, st, ans)
			}
			_, err := os.Stat(d.profilePath(manifest))
			if has := err == nil; has != (r == profiled) {
				b.Fatalf("mount %s: profile stored %v", r, has)
			}
			d.umount(b, ans["id"].(string), mp)
			b.StartTimer()
		}
	}
	med := func(t []time.Duration) time.Duration {
		slices.Sort(t)
		return t[len(t)/2]
	}
	n := float64(b.N)
	b.ReportMetric(float64(med(times[0]).Microseconds())/1000, "ms-plain")
	b.ReportMetric(float64(med(times[1]).Microseconds())/1000, "ms-profile")
	b.ReportMetric(float64(reqs[0])/n, "req-plain")
	b.ReportMetric(float64(reqs[1])/n, "req-profile")
	b.ReportMetric(0, "ns/op")
	b.Logf("median mount by reference: %s without a profile artifact, %s with one (%.2fx); requests %.1f and %.1f per mount",
		med(times[0]).Round(time.Millisecond), med(times[1]).Round(time.Millisecond),
		float64(med(times[1]))/float64(med(times[0])), float64(reqs[0])/n, float64(reqs[1])/n)
}
