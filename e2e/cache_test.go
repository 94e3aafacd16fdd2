package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// imgFile is one regular file of a generated image: the oracle of its
// bytes.
type imgFile struct {
	path string
	data []byte
}

// genFiles makes n files under dir of about size bytes each: half text-like
// (compressible), half random, so that spans compress unevenly.
func genFiles(seed uint64, dir string, n, size int) []imgFile {
	r := rand.New(rand.NewPCG(seed, 42))
	words := []string{"clipd ", "span ", "layer ", "cache ", "budget ", "evict ", "fetch ", "\n"}
	out := make([]imgFile, n)
	for i := range out {
		sz := size/2 + r.IntN(size)
		b := make([]byte, 0, sz)
		for len(b) < sz {
			if r.IntN(2) == 0 {
				for range 64 {
					b = append(b, words[r.IntN(len(words))]...)
				}
			} else {
				chunk := make([]byte, 512)
				for j := range chunk {
					chunk[j] = byte(r.Uint32())
				}
				b = append(b, chunk...)
			}
		}
		out[i] = imgFile{path: fmt.Sprintf("/%s/f%03d", dir, i), data: b[:sz]}
	}
	return out
}

func layerOf(t testing.TB, dir string, files []imgFile) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1700000000, 0)
	tw.WriteHeader(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt})
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(f.path, "/"), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data)), ModTime: mt})
		tw.Write(f.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// sharedImages pushes n images to host as cachetest:imgI: one base layer
// (baseFiles files) shared by all, and a layer of their own each. It
// returns every image's files.
func sharedImages(t testing.TB, host string, n, baseFiles, topFiles, size int) [][]imgFile {
	t.Helper()
	defer timed(t, "push shared-base images")()
	base := genFiles(1, "base", baseFiles, size)
	baseLayer := layerOf(t, "base", base)
	var out [][]imgFile
	for i := range n {
		dir := fmt.Sprintf("app%d", i)
		top := genFiles(uint64(10+i), dir, topFiles, size)
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		img, err := mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"}})
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, baseLayer, layerOf(t, dir, top)); err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(fmt.Sprintf("%s/cachetest:img%d", host, i))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
		out = append(out, append(slices.Clone(base), top...))
	}
	return out
}

// startCacheDaemon starts clipd serve like startDaemon, with the cache in
// cacheDir and extra [cache] keys.
func startCacheDaemon(t testing.TB, cacheDir, cacheKeys string) *daemon {
	t.Helper()
	return launch(t, newDaemonConfig(t, cacheDir, cacheKeys))
}

// directRead reads n bytes at off of path with O_DIRECT, so that the read
// reaches clipd instead of the kernel's page cache. off and n are multiples
// of 4096 (short at EOF).
func directRead(path string, off int64, n int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw := make([]byte, n+4096)
	a := int(4096 - uintptr(unsafePointer(raw))%4096)
	buf := raw[a%4096 : a%4096+n]
	got := 0
	for got < n {
		k, err := f.ReadAt(buf[got:], off+int64(got))
		got += k
		if err == io.EOF || (err == nil && k == 0) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return buf[:got], nil
}

// ledgerSample sums the entry files of the cache with the ledger locked (as
// every clipd process does to publish or evict), so the sum is consistent.
func ledgerSample(t testing.TB, dir string) (onDisk, ledger int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, ".ledger"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				onDisk += fi.Size()
			}
		}
		return nil
	})
	ledger, _, _ = cache.ReadUsage(dir)
	return onDisk, ledger
}

// indexAll indexes cachetest:img0..n-1 from host with spanSize.
func indexAll(t testing.TB, d *daemon, host string, n int, spanSize string) []string {
	t.Helper()
	var out []string
	work := t.TempDir()
	for i := range n {
		archive := filepath.Join(work, fmt.Sprintf("img%d.clip", i))
		run(t, d.bin, "index", "--span-size", spanSize, "-o", archive, fmt.Sprintf("%s/cachetest:img%d", host, i))
		out = append(out, archive)
	}
	return out
}

// TestCacheBudgetRandomWorkload: three images sharing their base layer,
// read at random through three mounts with a cache budget of a sixth of the
// data: sampled with the ledger locked, the cache never holds more than its
// budget, and every byte read equals the generated files.
func TestCacheBudgetRandomWorkload(t *testing.T) {
	requireE2ETools(t)
	host := testenv.StartRegistry(t)
	images := sharedImages(t, host, 3, 24, 8, 256<<10) // ~6 MiB base + 3 × ~2 MiB
	const budget = 2 << 20
	cacheDir := filepath.Join(t.TempDir(), "cache")
	d := startCacheDaemon(t, cacheDir, `max_size = "2MiB"`+"\n"+`min_free = "0B"`)
	archives := indexAll(t, d, host, 3, "256KiB")
	var mps []string
	for i, a := range archives {
		_, mp := d.mount(t, a, fmt.Sprintf("img%d", i))
		mps = append(mps, mp)
	}

	stop := make(chan struct{})
	var samples, maxSeen atomic.Int64
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			disk, ledger := ledgerSample(t, cacheDir)
			samples.Add(1)
			if disk > maxSeen.Load() {
				maxSeen.Store(disk)
			}
			if disk > budget || disk != ledger {
				t.Errorf("sample %d: %d bytes of entries on disk, ledger says %d, budget %d", samples.Load(), disk, ledger, budget)
			}
		}
	}()
	var reads, bytesRead atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range 150 {
				i := r.IntN(len(mps))
				f := images[i][r.IntN(len(images[i]))]
				off := int64(r.IntN(len(f.data))) &^ 4095
				n := (1 + r.IntN(96)) * 4096
				got, err := directRead(filepath.Join(mps[i], f.path), off, n)
				if err != nil {
					t.Errorf("read %s of image %d at %d: %v", f.path, i, off, err)
					return
				}
				want := f.data[off:min(off+int64(n), int64(len(f.data)))]
				if !bytes.Equal(got, want) {
					t.Errorf("read %s of image %d at %d: %d bytes differ from the oracle's %d", f.path, i, off, len(got), len(want))
					return
				}
				reads.Add(1)
				bytesRead.Add(int64(len(got)))
			}
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	_, evictions, _ := cache.ReadUsage(cacheDir)
	t.Logf("%d reads, %d bytes, all equal to the oracle; %d samples, at most %d bytes cached (budget %d); %d evictions",
		reads.Load(), bytesRead.Load(), samples.Load(), maxSeen.Load(), budget, evictions)
	if samples.Load() < 10 || evictions == 0 {
		t.Errorf("the workload did not exercise the budget: %d samples, %d evictions", samples.Load(), evictions)
	}
	out := run(t, d.bin, "--config", d.config, "cache", "ls")
	if !strings.Contains(out, "evictions") {
		t.Errorf("clipd cache ls: %q", out)
	}
	t.Logf("clipd cache ls:\n%s", out)
	for _, m := range d.ls(t) {
		t.Logf("mount %v stats: %v", m["id"], m["stats"])
	}
}

// TestCacheSharedLayerFetchedOnce: two mounts of images that share their
// base layer read the same files at once: no byte of the base layer is
// requested from the registry twice.
func TestCacheSharedLayerFetchedOnce(t *testing.T) {
	requireE2ETools(t)
	host := testenv.StartRegistry(t)
	images := sharedImages(t, host, 2, 12, 2, 512<<10)
	proxy := testenv.StartCountingProxy(t, host)
	d := startCacheDaemon(t, filepath.Join(t.TempDir(), "cache"), "")
	archives := indexAll(t, d, proxy.Addr, 2, "256KiB")
	a, err := index.Open(archives[0])
	if err != nil {
		t.Fatal(err)
	}
	base := a.Layers[0]
	var mps []string
	for i, ar := range archives {
		_, mp := d.mount(t, ar, fmt.Sprintf("img%d", i))
		mps = append(mps, mp)
	}
	proxy.Reset()
	var wg sync.WaitGroup
	for _, mp := range mps {
		for _, order := range []bool{false, true} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				files := images[0][:12] // the base layer's
				if order {
					files = slices.Clone(files)
					slices.Reverse(files)
				}
				for _, f := range files {
					got, err := os.ReadFile(filepath.Join(mp, f.path))
					if err != nil || !bytes.Equal(got, f.data) {
						t.Errorf("%s in %s: %v, or bytes differ from the oracle", f.path, mp, err)
					}
				}
			}()
		}
	}
	wg.Wait()
	// Neighbouring spans share the byte where one ends and the next
	// begins (checkpoints fall at bit offsets): count fetches per span.
	reqs := proxy.Blob(base.Digest)
	fetches := make([]int, len(base.Spans.Spans))
	var moved int64
	for _, r := range reqs {
		var from, to int64
		if _, err := fmt.Sscanf(r.Range, "bytes=%d-%d", &from, &to); err != nil {
			t.Fatalf("base layer request without a closed range: %+v", r)
		}
		moved += to - from + 1
		for i, s := range base.Spans.Spans {
			if s.COff >= from && s.CEnd-1 <= to {
				fetches[i]++
			}
		}
	}
	for i, n := range fetches {
		if n != 1 {
			t.Errorf("base layer span %d fetched %d times, want once", i, n)
		}
	}
	t.Logf("base layer: %d spans, %d requests, %d bytes of %d; 2 mounts × 2 readers read it whole", len(fetches), len(reqs), moved, base.Size)
	if moved > base.Size+int64(len(fetches)) {
		t.Errorf("moved %d bytes of a %d-byte layer", moved, base.Size)
	}
}

// TestCacheKill9: kill -9 of the daemon while reads run, restart, remount:
// every byte is correct, and the second run moves at most 5% of what the
// first moved (the cache kept what was published; nothing torn is served).
func TestCacheKill9(t *testing.T) {
	requireE2ETools(t)
	host := testenv.StartRegistry(t)
	images := sharedImages(t, host, 1, 24, 8, 256<<10)
	proxy := testenv.StartCountingProxy(t, host)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	d := startCacheDaemon(t, cacheDir, "")
	archives := indexAll(t, d, proxy.Addr, 1, "256KiB")
	_, mp := d.mount(t, archives[0], "img")
	proxy.Reset()

	files := images[0]
	passDone := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for pass := 0; ; pass++ {
				order := r.Perm(len(files))
				for _, k := range order {
					f := files[k]
					got, err := directRead(filepath.Join(mp, f.path), 0, (len(f.data)+4095)&^4095)
					if err != nil {
						return // the daemon is gone
					}
					if !bytes.Equal(got, f.data) {
						t.Errorf("pass %d: %s differs from the oracle before the kill", pass, f.path)
						return
					}
				}
				if pass == 0 {
					once.Do(func() { close(passDone) })
				}
			}
		}()
	}
	select {
	case <-passDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("the first read pass did not finish in 2 minutes")
	}
	time.Sleep(50 * time.Millisecond) // into the next pass
	// The daemon and, when mounts have serving processes, the process that
	// writes this mount's spans, at once.
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range servingPIDs(t, d.mountRoot) {
		t.Logf("kill -9 serving process %d", pid)
		unix.Kill(pid, unix.SIGKILL)
	}
	<-d.exited
	// The FUSE mount of a killed in-process daemon is dead; a serving
	// process may outlive it. Either way, detach it and start over.
	for _, m := range clipdMounts(t, d.mountRoot) {
		unix.Unmount(m, unix.MNT_DETACH)
	}
	wg.Wait()
	first := proxy.Bytes()

	proxy.Reset()
	d2 := startCacheDaemon(t, cacheDir, "")
	_, mp2 := d2.mount(t, archives[0], "again")
	for _, f := range files {
		got, err := directRead(filepath.Join(mp2, f.path), 0, (len(f.data)+4095)&^4095)
		if err != nil || !bytes.Equal(got, f.data) {
			t.Errorf("after restart: %s: %v, or bytes differ from the oracle", f.path, err)
		}
	}
	second := proxy.Bytes()
	t.Logf("first run moved %d bytes, second run %d (%.2f%%)", first, second, 100*float64(second)/float64(max(first, 1)))
	if first == 0 || float64(second) > 0.05*float64(first) {
		t.Errorf("second run moved %d bytes, more than 5%% of the first run's %d", second, first)
	}
}

// TestCacheTinyTmpfs: a cache on an 8 MiB tmpfs with a budget of 1 GiB and
// no min_free: writes hit ENOSPC; every read still succeeds with the right
// bytes.
func TestCacheTinyTmpfs(t *testing.T) {
	requireE2ETools(t)
	host := testenv.StartRegistry(t)
	images := sharedImages(t, host, 1, 24, 8, 512<<10) // ~16 MiB, 2× the file system
	cacheDir := t.TempDir()
	if err := unix.Mount("tmpfs", cacheDir, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(cacheDir, unix.MNT_DETACH) })
	d := startCacheDaemon(t, cacheDir, `max_size = "1GiB"`+"\n"+`min_free = "0B"`)
	archives := indexAll(t, d, host, 1, "4MiB")
	_, mp := d.mount(t, archives[0], "img")
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pass := range 2 {
				for k, f := range images[0] {
					if (k+w)%3 != 0 && pass == 0 {
						continue
					}
					got, err := directRead(filepath.Join(mp, f.path), 0, (len(f.data)+4095)&^4095)
					if err != nil || !bytes.Equal(got, f.data) {
						t.Errorf("%s: %v, or bytes differ from the oracle", f.path, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	var st unix.Statfs_t
	unix.Statfs(cacheDir, &st)
	used, evictions, _ := cache.ReadUsage(cacheDir)
	log, _ := os.ReadFile(d.log)
	warned := strings.Count(string(log), "cannot write to the cache")
	t.Logf("tmpfs: %d of %d bytes used; ledger %d bytes, %d evictions; %d 'cannot write' warnings",
		(st.Blocks-st.Bfree)*uint64(st.Bsize), st.Blocks*uint64(st.Bsize), used, evictions, warned)
	if evictions == 0 && warned == 0 {
		t.Errorf("neither evictions nor write failures: the test did not fill the file system")
	}
	if !strings.Contains(string(log), "level=") || strings.Contains(string(log), "level=ERROR") {
		t.Errorf("the daemon logged errors:\n%s", d.logTail())
	}
}

// unsafePointer returns the address of b's first byte (O_DIRECT buffers
// must be aligned).
func unsafePointer(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// servingPIDs returns the processes whose command line names a mountpoint
// under root (clipd serve-mount --mountpoint ...).
func servingPIDs(t testing.TB, root string) []int {
	t.Helper()
	var out []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if slices.Contains(args, "serve-mount") && strings.Contains(string(b), root+"/") {
			out = append(out, pid)
		}
	}
	return out
}
