package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/clipd/clipd/bench"
	"github.com/clipd/clipd/index"
)

// scale measures the generated scale image: generation, `clipd index`
// from the benchmark's registry, mount requests, the serving process's
// memory, and `ls -lR` of the mount against the extracted tree. Nothing
// is shaped: the figures are about clipd's own work, and a metadata walk
// needs no registry byte.
func (h *harness) scale(ctx context.Context, o options, registry string) (*bench.Scale, error) {
	gen := filepath.Join(h.scratch, "scale-image")
	defer os.RemoveAll(gen)
	opts := bench.DefaultScale()
	opts.Files, opts.Bytes, opts.Workers = o.scaleFiles, o.scaleBytes, o.scaleWorkers
	h.log.Info("generating the scale image", "files", opts.Files, "bytes", opts.Bytes, "layers", opts.Layers)
	start := time.Now()
	img, err := bench.GenerateScaleImage(ctx, gen, opts)
	if err != nil {
		return nil, err
	}
	s := &bench.Scale{Files: img.Files, Dirs: img.Dirs, Symlinks: img.Symlinks, Hardlinks: img.Hardlinks, Layers: img.Layers,
		Uncompressed: img.Uncompressed, Compressed: img.Compressed, GenSeconds: time.Since(start).Seconds()}
	h.log.Info("scale image generated", "seconds", fmt.Sprintf("%.1f", s.GenSeconds), "compressed", img.Compressed)

	if _, err := run(ctx, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:"+gen+":"+img.Tag, "docker://"+registry+"/bench/scale:latest"); err != nil {
		return nil, err
	}
	h.shaper.SetProfile(bench.Profile{Name: "none"})
	archive := filepath.Join(h.scratch, "scale.clip")
	took, err := clipdIndex(ctx, h.clipdBin, h.shaper.Addr+"/bench/scale:latest", archive, o.span)
	if err != nil {
		return nil, err
	}
	s.IndexSeconds, s.IndexBytes = took.Seconds(), fileSize(archive)+fileSize(index.WindowsPath(archive))
	h.log.Info("scale image indexed", "seconds", fmt.Sprintf("%.1f", s.IndexSeconds), "bytes", s.IndexBytes)

	if err := h.scaleMount(ctx, archive, o.scaleMounts, s); err != nil {
		return nil, err
	}

	// The extracted tree, with the harness's own unpacker.
	tree := filepath.Join(h.scratch, "scale-tree")
	defer os.RemoveAll(tree)
	start = time.Now()
	for _, blob := range img.LayerBlobs {
		f, err := os.Open(blob)
		if err != nil {
			return nil, err
		}
		err = applyLayer(ctx, tree, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("extract %s: %w", filepath.Base(blob), err)
		}
	}
	s.ExtractSeconds = time.Since(start).Seconds()
	for range 3 {
		t := time.Now()
		if _, err := runMeasured(ctx, "ls", "-lR", tree); err != nil {
			return nil, err
		}
		s.LsTreeSeconds = append(s.LsTreeSeconds, time.Since(t).Seconds())
	}
	h.log.Info("scale", "mount_median_ms", fmt.Sprintf("%.1f", 1000*bench.Median(s.MountSeconds)), "hwm_after_ls", s.HWMAfterLs,
		"ls_mount", fmt.Sprintf("%.2f", s.LsMountSeconds), "ls_tree", fmt.Sprintf("%.2f", bench.Median(s.LsTreeSeconds)))
	return s, nil
}

// scaleMount makes n mounts of archive one after another on a fresh
// daemon, timing each request; the last stays for the memory figures and
// the walks.
func (h *harness) scaleMount(ctx context.Context, archive string, n int, s *bench.Scale) error {
	dir, err := h.fresh("scale-clipd")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d, err := startDaemon(ctx, h.clipdBin, dir, "")
	if err != nil {
		return err
	}
	defer d.stop()
	h.shaper.Reset()
	var m mountInfo
	for i := range max(n, 1) {
		start := time.Now()
		m, err = d.mount(ctx, archive, fmt.Sprintf("scale-%d", i), false, false)
		if err != nil {
			return fmt.Errorf("mount the scale image: %w (clipd log: %s)", err, d.logTail())
		}
		s.MountSeconds = append(s.MountSeconds, time.Since(start).Seconds())
		if i < n-1 {
			if err := d.unmount(ctx, m.ID); err != nil {
				return err
			}
		}
	}
	defer func() { _ = d.unmount(ctx, m.ID) }()
	pid := m.PID
	if pid <= 0 {
		pid = d.cmd.Process.Pid
	}
	s.SeparateProcess = pid != d.cmd.Process.Pid
	s.HWMAfterMount, s.RSSAfterMount = procMem(pid)
	start := time.Now()
	if _, err := runMeasured(ctx, "ls", "-lR", m.Mountpoint); err != nil {
		return fmt.Errorf("%w (clipd log: %s)", err, d.logTail())
	}
	s.LsMountSeconds = time.Since(start).Seconds()
	start = time.Now()
	if _, err := runMeasured(ctx, "ls", "-lR", m.Mountpoint); err != nil {
		return err
	}
	s.LsMountAgain = time.Since(start).Seconds()
	s.HWMAfterLs, s.RSSAfterLs = procMem(pid)
	c := h.shaper.Counts()
	s.Moved, s.Requests = c.Bytes, c.Requests
	return nil
}

// procMem returns VmHWM and VmRSS of process pid, in bytes (0 if gone).
func procMem(pid int) (hwm, rss int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) < 1 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64) // kB
		switch k {
		case "VmHWM":
			hwm = n << 10
		case "VmRSS":
			rss = n << 10
		}
	}
	return hwm, rss
}
