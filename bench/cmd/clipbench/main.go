// Command clipbench is the cold-start benchmark behind `make bench`: it
// pushes an image into a throwaway docker-registry, puts a network shaper in
// front of it and measures, per network profile and workload, a full pull,
// clip v2 and clipd (cold and warm cache), alternating, then writes
// bench/results/latest.{json,md,png}. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/clipd/clipd/bench"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

type options struct {
	quick       bool
	rounds      int
	sweepRounds int
	image       string // skopeo source of the image
	clipdBin    string
	out         string
	profiles    []string
	workloads   []string
	spans       []string
	span        string // the span size of the main runs
	noRef       bool   // leave out clipd-ref-cold
	profiled    bool   // measure clipd-profiled and the cross-workload profile (-no-profiled: not)
	scaleOnly   bool   // only the scale image
	noScale     bool   // leave out the scale image
	scaleFiles  int
	scaleBytes  int64
	scaleMounts int // mount requests timed on the scale image
	// scaleWorkers: layers of the scale image generated at once.
	scaleWorkers int
	work         string
}

func main() {
	var o options
	var profiles, workloads, spans string
	flag.BoolVar(&o.quick, "quick", false, "one round, region only, python-import only (under 2 minutes)")
	flag.IntVar(&o.rounds, "rounds", 3, "runs of each contender per profile and workload")
	flag.IntVar(&o.sweepRounds, "sweep-rounds", 5, "runs of each span size in the sweep")
	flag.StringVar(&o.image, "image", "", "skopeo source of the image (default: oci:<repo>/../shared/images/debian-python:python, built with scripts/build-debian-image.sh when missing)")
	flag.StringVar(&o.clipdBin, "clipd", "bin/clipd", "the clipd binary")
	flag.StringVar(&o.out, "out", "bench/results", "directory of latest.json, latest.md, latest.png")
	flag.StringVar(&profiles, "profiles", "lan,region,far", "network profiles")
	flag.StringVar(&workloads, "workloads", strings.Join(bench.Workloads(), ","), "workloads")
	flag.StringVar(&spans, "sweep", "1MiB,2MiB,4MiB,8MiB", "span sizes of the sweep on region (empty: no sweep)")
	flag.StringVar(&o.span, "span-size", "1MiB", "span size of the clipd index used by the main runs")
	flag.BoolVar(&o.noRef, "no-ref", false, "leave out clipd-ref-cold (mount by reference of the published index)")
	flag.StringVar(&o.work, "work", "", "scratch directory (default: a new one under /var/tmp)")
	noProfiled := flag.Bool("no-profiled", false, "leave out clipd-profiled and the cross-workload profile (for a clipd without prefetch profiles)")
	flag.BoolVar(&o.scaleOnly, "scale-only", false, "measure only the scale image")
	flag.BoolVar(&o.noScale, "no-scale", false, "leave out the scale image")
	flag.IntVar(&o.scaleFiles, "scale-files", 0, "regular files of the scale image (default 100000; 10000 with -quick)")
	scaleMiB := flag.Int64("scale-mib", 0, "MiB of file contents of the scale image (default 2048; 204 with -quick)")
	flag.IntVar(&o.scaleMounts, "scale-mounts", 7, "mount requests timed on the scale image (the median is reported)")
	flag.IntVar(&o.scaleWorkers, "scale-workers", 2, "layers of the scale image generated at once")
	flag.Parse()
	o.profiled = !*noProfiled
	if o.scaleOnly && o.noScale {
		fmt.Fprintln(os.Stderr, "clipbench: -scale-only and -no-scale exclude each other")
		os.Exit(2)
	}
	o.profiles, o.workloads, o.spans = split(profiles), split(workloads), split(spans)
	if o.quick {
		o.rounds, o.sweepRounds, o.profiles, o.workloads = 1, 1, []string{"region"}, []string{"python-import"}
	}
	// QUICK keeps the scale part quick: a tenth of the image.
	def := bench.DefaultScale()
	if o.quick {
		def.Files, def.Bytes = def.Files/10, def.Bytes/10
	}
	if o.scaleFiles <= 0 {
		o.scaleFiles = def.Files
	}
	o.scaleBytes = def.Bytes
	if *scaleMiB > 0 {
		o.scaleBytes = *scaleMiB << 20
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runBench(ctx, log, o); err != nil {
		log.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
}

// contender reports whether the optional contender c is measured.
func (o options) contender(c string) bool {
	switch c {
	case bench.ClipdRefCold:
		return !o.noRef
	case bench.ClipdProfiled, bench.ClipdProfiledCross:
		return o.profiled
	}
	return true
}

// publishedLine returns the line of `clipd index --push` that reports the
// published index and its up-front size.
func publishedLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "published index") {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(out)
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func runBench(ctx context.Context, log *slog.Logger, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root (FUSE mounts, chroot, overlay, runc)")
	}
	tools := []string{"docker-registry", "skopeo", "fusermount3"}
	if !o.scaleOnly {
		tools = append(tools, "umoci", "runc", "chroot", "gnuplot")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s is missing: run `make bench`, which installs it", t)
		}
	}
	began := time.Now()
	meta := bench.Meta{Quick: o.quick, Rounds: o.rounds, LoadBefore: loadavg(), CPUs: cpus(), Started: began}
	// What is measured is fixed now: the commit, and a private copy of the
	// binary (bin/clipd may be rebuilt by someone else while this runs).
	commit, dirty := gitCommit(ctx), gitDirty(ctx)
	meta.Dirty = dirty
	work := o.work
	var err error
	if work == "" {
		if work, err = os.MkdirTemp("/var/tmp", "clipbench-"); err != nil {
			return err
		}
	}
	defer os.RemoveAll(work)
	clipdBin := filepath.Join(work, "clipd")
	if err := copyFile(o.clipdBin, clipdBin, 0o755); err != nil {
		return err
	}
	if out, err := run(ctx, clipdBin, "version"); err == nil {
		// The first line: `clipd version` goes on to ask a running daemon.
		meta.ClipdVersion = strings.TrimSpace(strings.SplitN(strings.TrimSpace(out), "\n", 2)[0])
	}
	if err := clip.SetLogLevel("error"); err != nil {
		return err
	}

	// The image, in a registry of its own: nothing cached from earlier runs.
	regDir := filepath.Join(work, "registry")
	if err := os.MkdirAll(regDir, 0o755); err != nil {
		return err
	}
	reg, err := testenv.RunRegistry(ctx, regDir)
	if err != nil {
		return err
	}
	defer func() {
		reg.Stop()
		_ = os.WriteFile(filepath.Join(regDir, "registry.log"), []byte(reg.Log()), 0o644)
	}()
	shaper, err := bench.StartShaper(reg.Addr)
	if err != nil {
		return err
	}
	defer shaper.Close()
	h := &harness{log: log, scratch: work, shaper: shaper, ref: shaper.Addr + "/bench/image:latest",
		clipdBin: clipdBin, local: map[string][]float64{}, cpu: map[string][]float64{}, profiles: o.profiled}
	if !o.scaleOnly {
		if err := mainRuns(ctx, h, o, &meta, reg.Addr); err != nil {
			return err
		}
	}
	var scale *bench.Scale
	if !o.noScale {
		if scale, err = h.scale(ctx, o, reg.Addr); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			h.failures = append(h.failures, fmt.Sprintf("scale image: %v", err))
			log.Error("scale image failed", "err", err)
		}
	}

	meta.LoadAfter = loadavg()
	meta.Duration = time.Since(began)
	meta.Local = map[string]float64{}
	for w, xs := range h.local {
		meta.Local[w] = bench.Median(xs)
	}
	meta.Failures = h.failures
	meta.CPU = map[string]float64{}
	for k, xs := range h.cpu {
		meta.CPU[k] = bench.Median(xs)
	}
	res := bench.Results{Commit: commit, Runs: h.runs, Scale: scale}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := bench.WriteJSON(filepath.Join(o.out, "latest.json"), res); err != nil {
		return err
	}
	if err := bench.WriteReport(filepath.Join(o.out, "latest.md"), res, meta); err != nil {
		return err
	}
	if len(res.Runs) > 0 {
		if err := bench.WriteChart(ctx, filepath.Join(o.out, "latest.png"), res, o.profiles); err != nil {
			return err
		}
	}
	log.Info("done", "took", meta.Duration.Round(time.Second), "out", o.out, "failures", len(h.failures))
	if len(h.failures) > 0 {
		return fmt.Errorf("%d runs failed: %s", len(h.failures), strings.Join(h.failures, "; "))
	}
	return nil
}

// mainRuns pushes the benchmark's image and measures every contender on
// it: indexes, the cold starts per profile and workload, the
// cross-workload profile and the span-size sweep.
func mainRuns(ctx context.Context, h *harness, o options, meta *bench.Meta, registry string) error {
	log, work, clipdBin := h.log, h.scratch, h.clipdBin
	src, err := imageSource(ctx, o.image)
	if err != nil {
		return err
	}
	meta.Image = src
	log.Info("pushing", "image", src, "registry", registry)
	shaper := h.shaper
	if _, err := run(ctx, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", src, "docker://"+registry+"/bench/image:latest"); err != nil {
		return err
	}
	info, err := describeImage(ctx, registry+"/bench/image:latest")
	if err != nil {
		return err
	}
	meta.ImageBytes, meta.Layers = info.compressed, info.layers

	// A reference pull (unshaped) tells which file is the ~5 MB one.
	refRoot := filepath.Join(work, "reference")
	if err := goPull(ctx, h.ref, refRoot, nil); err != nil {
		return err
	}
	catPath, catSize, err := pickLargeFile(refRoot, 5<<20)
	if err != nil {
		return err
	}
	os.RemoveAll(refRoot)
	meta.CatFile, meta.CatSize = "/"+catPath, catSize
	tmpl, err := runcTemplate(ctx, work)
	if err != nil {
		return err
	}
	h.ws = &workloads{catPath: catPath, image: info.run, runcTemplate: tmpl, scratch: work}

	// Indexes: clipd's and clip's, timed on region; the sweep's unshaped.
	region, _ := bench.ProfileByName("region")
	shaper.SetProfile(region)
	archive := filepath.Join(work, "clipd-"+o.span+".clip")
	took, err := clipdIndex(ctx, clipdBin, h.ref, archive, o.span)
	if err != nil {
		return err
	}
	h.archive = archive
	meta.Indexes = append(meta.Indexes, bench.IndexTiming{Tool: "clipd index --span-size " + o.span, Profile: "region", Seconds: took.Seconds(), Bytes: fileSize(archive)})
	// The index published beside the image (setup, unshaped): what
	// clipd-ref-cold's nodes find through the registry.
	if o.contender(bench.ClipdRefCold) {
		shaper.SetProfile(bench.Profile{Name: "none"})
		out, err := run(ctx, clipdBin, "index", "--span-size", o.span, "--push", h.ref)
		if err != nil {
			return fmt.Errorf("publish the index: %w", err)
		}
		meta.Published = publishedLine(out)
		log.Info("index published", "out", meta.Published)
		shaper.SetProfile(region)
	}
	h.clipArchive = filepath.Join(work, "clip.clip")
	start := time.Now()
	closeDefaultTransports()
	shaper.Reset()
	if err := clip.CreateFromOCIImage(ctx, clip.CreateFromOCIImageOptions{ImageRef: h.ref, OutputPath: h.clipArchive}); err != nil {
		return fmt.Errorf("clip.CreateFromOCIImage %s: %w", h.ref, err)
	}
	meta.Indexes = append(meta.Indexes, bench.IndexTiming{Tool: "clip.CreateFromOCIImage", Profile: "region", Seconds: time.Since(start).Seconds(), Bytes: fileSize(h.clipArchive)})
	closeDefaultTransports()

	// The full pull contender is whichever full pull is faster here.
	h.pullMethod = "go"
	if !o.quick {
		meta.Pulls, h.pullMethod, err = comparePulls(ctx, h)
		if err != nil {
			return err
		}
	}
	meta.PullMethod = h.pullMethod

	for _, pn := range o.profiles {
		p, ok := bench.ProfileByName(pn)
		if !ok {
			return fmt.Errorf("unknown profile %q", pn)
		}
		shaper.SetProfile(p)
		for _, w := range o.workloads {
			groups := []func(context.Context, bench.Profile, string) error{h.fullPull, h.clipV2, h.clipd}
			names := []string{bench.FullPull, bench.ClipV2, "clipd"}
			if o.contender(bench.ClipdRefCold) {
				groups, names = append(groups, h.clipdRef), append(names, bench.ClipdRefCold)
			}
			if o.contender(bench.ClipdProfiled) {
				groups, names = append(groups, h.clipdProfiled), append(names, bench.ClipdProfiled)
			}
			for r := range o.rounds {
				// Alternate: each round starts with the next contender.
				for k := range groups {
					i := (r + k) % len(groups)
					if err := groups[i](ctx, p, w); err != nil {
						if ctx.Err() != nil {
							return ctx.Err()
						}
						h.fail(p, names[i], w, err)
					}
				}
			}
		}
	}

	// A profile recorded on python-import, replayed by other workloads.
	if o.contender(bench.ClipdProfiledCross) {
		shaper.SetProfile(region)
		h.crossWorkload(ctx, region, "python-import", []string{"ls-lR", "cat-5mb"}, o.rounds)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}

	if len(o.spans) > 0 {
		shaper.SetProfile(region)
		meta.Sweep, err = sweep(ctx, h, o, region)
		if err != nil {
			return err
		}
	}

	return nil
}

// sweep measures clipd-cold on python-import with each span size; the
// sizes alternate within each round, like the contenders.
func sweep(ctx context.Context, h *harness, o options, p bench.Profile) ([]bench.SweepRow, error) {
	archives := make([]string, len(o.spans))
	h.shaper.SetProfile(bench.Profile{Name: "none"})
	for i, s := range o.spans {
		if s == o.span {
			archives[i] = h.archive
			continue
		}
		archives[i] = filepath.Join(h.scratch, "sweep-"+s+".clip")
		if _, err := clipdIndex(ctx, h.clipdBin, h.ref, archives[i], s); err != nil {
			return nil, err
		}
	}
	h.shaper.SetProfile(p)
	runs := make([][]bench.Run, len(o.spans))
	cpu := make([][]float64, len(o.spans))
	k := bench.Key(p.Name, "sweep", "python-import")
	for r := range o.sweepRounds {
		for j := range o.spans {
			i := (r + j) % len(o.spans)
			before := len(h.runs)
			if err := h.clipdArchive(ctx, p, "python-import", archives[i], false, "sweep"); err != nil {
				return nil, fmt.Errorf("sweep %s: %w", o.spans[i], err)
			}
			// The sweep is reported apart from the main runs.
			runs[i] = append(runs[i], h.runs[before:]...)
			h.runs = h.runs[:before]
			cpu[i] = append(cpu[i], h.cpu[k]...)
			delete(h.cpu, k)
		}
	}
	var rows []bench.SweepRow
	for i, s := range o.spans {
		m := bench.Summarize(runs[i])
		rows = append(rows, bench.SweepRow{SpanSize: s, Seconds: m.Seconds, BytesMoved: int64(m.BytesMoved),
			Requests: int64(m.Requests), IndexBytes: fileSize(archives[i]), Runs: m.N, CPU: bench.Median(cpu[i])})
	}
	return rows, nil
}

// comparePulls times both full pulls once on region (pull only) and
// returns the faster's name.
func comparePulls(ctx context.Context, h *harness) ([]bench.PullTiming, string, error) {
	var out []bench.PullTiming
	for _, method := range []string{"go", "skopeo+umoci"} {
		dir, err := h.fresh("cmp")
		if err != nil {
			return nil, "", err
		}
		h.shaper.Reset()
		start := time.Now()
		if method == "go" {
			err = goPull(ctx, h.ref, filepath.Join(dir, "rootfs"), nil)
		} else {
			_, err = skopeoUmociPull(ctx, h.ref, dir)
		}
		took := time.Since(start)
		os.RemoveAll(dir)
		closeDefaultTransports()
		if err != nil {
			return nil, "", err
		}
		out = append(out, bench.PullTiming{Method: method, Profile: "region", Seconds: took.Seconds(), BytesMoved: h.shaper.Counts().Bytes})
		h.log.Info("full pull", "method", method, "seconds", fmt.Sprintf("%.2f", took.Seconds()))
	}
	best := out[0].Method
	if out[1].Seconds < out[0].Seconds {
		best = out[1].Method
	}
	return out, best, nil
}

func clipdIndex(ctx context.Context, bin, ref, out, span string) (time.Duration, error) {
	start := time.Now()
	if _, err := run(ctx, bin, "index", "--span-size", span, "-o", out, ref); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// imageSource returns the skopeo source of the image to benchmark.
func imageSource(ctx context.Context, flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	root, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for _, dir := range []string{filepath.Join(root, "..", "shared", "images", "debian-python"), filepath.Join(root, ".cache", "images", "debian-python")} {
		if b, err := os.ReadFile(filepath.Join(dir, "index.json")); err == nil && strings.Contains(string(b), `"python"`) {
			return "oci:" + filepath.Clean(dir) + ":python", nil
		}
	}
	dir := filepath.Join(root, ".cache", "images", "debian-python")
	if _, err := run(ctx, filepath.Join(root, "scripts", "build-debian-image.sh"), dir); err != nil {
		return "", fmt.Errorf("build the debian-python image: %w", err)
	}
	return "oci:" + dir + ":python", nil
}

type imageDesc struct {
	compressed int64 // manifest + config + layers
	layers     int
	run        imageInfo
}

func describeImage(ctx context.Context, ref string) (imageDesc, error) {
	var d imageDesc
	r, err := name.ParseReference(ref)
	if err != nil {
		return d, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return d, fmt.Errorf("describe %s: %w", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return d, err
	}
	raw, _ := img.RawManifest()
	d.compressed = int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		d.compressed += l.Size
	}
	d.layers = len(m.Layers)
	cf, err := img.ConfigFile()
	if err != nil {
		return d, err
	}
	d.run = imageInfo{Args: append(append([]string{}, cf.Config.Entrypoint...), cf.Config.Cmd...), Env: cf.Config.Env, Cwd: cf.Config.WorkingDir}
	if len(d.run.Args) == 0 {
		d.run.Args = []string{"/bin/sh", "-c", "true"}
	}
	if d.run.Cwd == "" {
		d.run.Cwd = "/"
	}
	return d, nil
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func cpus() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func gitCommit(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// gitDirty lists the tracked files that differ from the commit: the clipd
// measured was built from the working tree.
func gitDirty(ctx context.Context) []string {
	out, err := exec.CommandContext(ctx, "git", "status", "--porcelain", "--untracked-files=no").Output()
	if err != nil {
		return nil
	}
	var files []string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if len(l) > 3 {
			files = append(files, strings.TrimSpace(l[3:]))
		}
	}
	return files
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}
