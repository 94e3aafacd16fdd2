package bench

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
)

// ScaleOptions describe the generated scale image.
type ScaleOptions struct {
	Files   int   // regular files over all layers
	Bytes   int64 // their contents over all layers (uncompressed)
	Layers  int
	Seed    uint64
	Workers int // layers generated at once (default 2: the machine is shared)
	Tag     string
}

// DefaultScale is the image issue #11 asks for: 100,000 files, 2 GiB, 10
// layers.
func DefaultScale() ScaleOptions {
	return ScaleOptions{Files: 100_000, Bytes: 2 << 30, Layers: 10, Seed: 11, Workers: 2, Tag: "scale"}
}

// ScaleImage is what GenerateScaleImage wrote: an OCI image layout in Dir
// whose manifest is tagged Tag (skopeo: "oci:DIR:TAG").
type ScaleImage struct {
	Dir, Tag                         string
	Manifest                         string // digest of the manifest
	Files, Dirs, Symlinks, Hardlinks int
	Layers                           int
	Uncompressed, Compressed         int64 // file contents; gzip layer blobs
	LayerBlobs                       []string
}

// GenerateScaleImage writes a deterministic OCI image layout to dir: the
// same options give the same bytes (so the same digests) on every run.
// Each layer holds its share of the files in a tree of its own under a few
// common top-level directories (depths 3 to 12), with sizes drawn from a
// log-normal distribution (most files a few KiB, a tail of MiBs) scaled so
// that the contents add up to Bytes exactly, and contents that compress
// like a real image's: text made of words (most files), random bytes
// (compressed or encrypted data) and binary-like blocks mixing both. About
// 2% of the entries are symlinks and 1% hard links to files of their layer.
// Layers are generated Workers at a time, each gzipped (level 1) by one
// goroutine.
func GenerateScaleImage(ctx context.Context, dir string, o ScaleOptions) (ScaleImage, error) {
	img := ScaleImage{Dir: dir, Tag: o.Tag, Layers: o.Layers}
	if o.Layers <= 0 || o.Files < o.Layers || o.Bytes < int64(o.Files) {
		return img, fmt.Errorf("scale image: need layers > 0, files ≥ layers, bytes ≥ files (got %d, %d, %d)", o.Layers, o.Files, o.Bytes)
	}
	if o.Tag == "" {
		img.Tag = "scale"
	}
	workers := max(o.Workers, 1)
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return img, fmt.Errorf("scale image: %w", err)
	}
	layers := make([]genLayer, o.Layers)
	errs := make([]error, o.Layers)
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for i := range o.Layers {
		files := o.Files / o.Layers
		if i < o.Files%o.Layers {
			files++
		}
		bytes := o.Bytes / int64(o.Layers)
		if i == o.Layers-1 {
			bytes = o.Bytes - bytes*int64(o.Layers-1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			layers[i], errs[i] = writeLayer(ctx, blobs, i, files, bytes, o.Seed)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return img, fmt.Errorf("scale image: layer %d: %w", i, err)
		}
	}

	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	var diffIDs []string
	var history []map[string]any
	var mlayers []desc
	for i, l := range layers {
		img.Files += l.files
		img.Dirs += l.dirs
		img.Symlinks += l.symlinks
		img.Hardlinks += l.hardlinks
		img.Uncompressed += l.contents
		img.Compressed += l.size
		img.LayerBlobs = append(img.LayerBlobs, filepath.Join(blobs, strings.TrimPrefix(l.digest, "sha256:")))
		diffIDs = append(diffIDs, l.diffID)
		history = append(history, map[string]any{"created": scaleEpoch.Format(time.RFC3339), "created_by": fmt.Sprintf("clipbench scale layer %d", i)})
		mlayers = append(mlayers, desc{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: l.digest, Size: l.size})
	}
	config := map[string]any{
		"architecture": "amd64", "os": "linux", "created": scaleEpoch.Format(time.RFC3339),
		"config":  map[string]any{"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, "Cmd": []string{"/bin/sh"}},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": diffIDs},
		"history": history,
	}
	cfgDesc, err := writeJSONBlob(blobs, "application/vnd.oci.image.config.v1+json", config)
	if err != nil {
		return img, err
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{MediaType: cfgDesc.mediaType, Digest: cfgDesc.digest, Size: cfgDesc.size},
		"layers":        mlayers,
	}
	man, err := writeJSONBlob(blobs, "application/vnd.oci.image.manifest.v1+json", manifest)
	if err != nil {
		return img, err
	}
	img.Manifest = man.digest
	index := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []desc{{MediaType: man.mediaType, Digest: man.digest, Size: man.size,
			Annotations: map[string]string{"org.opencontainers.image.ref.name": img.Tag}}},
	}
	b, _ := json.Marshal(index)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		return img, fmt.Errorf("scale image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return img, fmt.Errorf("scale image: %w", err)
	}
	return img, nil
}

// scaleEpoch is every entry's mtime: a fixed time keeps the layers' bytes
// the same from run to run.
var scaleEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type blobDesc struct {
	mediaType, digest string
	size              int64
}

func writeJSONBlob(blobs, mediaType string, v any) (blobDesc, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return blobDesc{}, fmt.Errorf("scale image: %w", err)
	}
	sum := sha256.Sum256(b)
	hexd := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(blobs, hexd), b, 0o644); err != nil {
		return blobDesc{}, fmt.Errorf("scale image: %w", err)
	}
	return blobDesc{mediaType: mediaType, digest: "sha256:" + hexd, size: int64(len(b))}, nil
}

// genLayer is one written layer.
type genLayer struct {
	digest, diffID                   string
	size, contents                   int64
	files, dirs, symlinks, hardlinks int
}

// Kinds of file content.
const (
	kindText = iota
	kindRandom
	kindBinary
)

// writeLayer generates layer i (files regular files holding bytes in all)
// into blobs and returns its digests. Everything random comes from a
// generator seeded with (seed, i), so layers can be made in any order.
func writeLayer(ctx context.Context, blobs string, i, files int, bytes int64, seed uint64) (genLayer, error) {
	l := genLayer{files: files, contents: bytes}
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	var chachaSeed [32]byte
	for k := range 4 {
		v := rng.Uint64()
		for j := range 8 {
			chachaSeed[8*k+j] = byte(v >> (8 * j))
		}
	}
	noise := rand.NewChaCha8(chachaSeed)
	corpus := textCorpus(rng, 1<<20)

	// The tree: a few bases per layer, then directories hung under random
	// existing ones, up to 12 deep.
	bases := []string{
		fmt.Sprintf("usr/lib/python3/site-packages/pkg%02d", i),
		fmt.Sprintf("usr/share/doc/suite%02d", i),
		fmt.Sprintf("opt/app%02d/lib", i),
		fmt.Sprintf("srv/data%02d", i),
	}
	dirs := slices.Clone(bases)
	nDirs := max(files/12, len(bases))
	for len(dirs) < nDirs {
		parent := dirs[rng.IntN(len(dirs))]
		if strings.Count(parent, "/") >= 11 {
			continue
		}
		dirs = append(dirs, parent+"/"+word(rng)+fmt.Sprintf("%d", len(dirs)))
	}
	// Every ancestor of every directory gets an entry of its own.
	all := map[string]bool{}
	for _, d := range dirs {
		for p := d; p != "." && p != "/" && !all[p]; p = path.Dir(p) {
			all[p] = true
		}
	}
	dirList := make([]string, 0, len(all))
	for d := range all {
		dirList = append(dirList, d)
	}
	slices.Sort(dirList) // a parent sorts before its children
	l.dirs = len(dirList)

	// Sizes: log-normal weights scaled to add up to bytes exactly.
	weights := make([]float64, files)
	var sum float64
	for k := range weights {
		weights[k] = math.Exp(8 + 1.8*rng.NormFloat64())
		sum += weights[k]
	}
	sizes := make([]int64, files)
	var total int64
	for k, w := range weights {
		sizes[k] = int64(w / sum * float64(bytes))
		total += sizes[k]
	}
	sizes[rng.IntN(files)] += bytes - total

	type file struct {
		name string
		size int64
		kind int
	}
	exts := [...][]string{kindText: {".py", ".txt", ".json", ".md", ".h"}, kindRandom: {".gz", ".png", ".whl"}, kindBinary: {".so", ".bin", ".o"}}
	fl := make([]file, files)
	for k := range fl {
		kind := kindText
		switch x := rng.IntN(100); {
		case x >= 80:
			kind = kindBinary
		case x >= 55:
			kind = kindRandom
		}
		e := exts[kind]
		fl[k] = file{name: fmt.Sprintf("%s/%s%d%s", dirs[rng.IntN(len(dirs))], word(rng), k, e[rng.IntN(len(e))]), size: sizes[k], kind: kind}
	}
	slices.SortFunc(fl, func(a, b file) int { return strings.Compare(a.name, b.name) })

	tmp, err := os.CreateTemp(blobs, ".layer-*")
	if err != nil {
		return l, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	compressed := sha256.New()
	counted := &countWriter{}
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, compressed, counted), 1<<20)
	gz, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return l, err
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diff))
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Format = scaleEpoch, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	for _, d := range dirList {
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			return l, err
		}
	}
	buf := make([]byte, 64<<10)
	for k, f := range fl {
		if k%256 == 0 && ctx.Err() != nil {
			return l, ctx.Err()
		}
		mode := int64(0o644)
		if f.kind == kindBinary {
			mode = 0o755
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Size: f.size, Mode: mode}); err != nil {
			return l, err
		}
		if err := fileContent(tw, rng, noise, corpus, buf, f.kind, f.size); err != nil {
			return l, err
		}
	}
	// Links to files of this layer, in directories of this layer.
	l.symlinks, l.hardlinks = files/50, files/100
	for k := range l.symlinks {
		target := fl[rng.IntN(len(fl))].name
		name := fmt.Sprintf("%s/link%d", dirs[rng.IntN(len(dirs))], k)
		rel, err := filepath.Rel(path.Dir(name), target)
		if err != nil || k%4 == 0 {
			rel = "/" + target // some absolute, as images have
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: rel, Mode: 0o777}); err != nil {
			return l, err
		}
	}
	for k := range l.hardlinks {
		target := fl[rng.IntN(len(fl))]
		mode := int64(0o644)
		if target.kind == kindBinary {
			mode = 0o755
		}
		name := fmt.Sprintf("%s/hardlink%d", dirs[rng.IntN(len(dirs))], k)
		if err := hdr(&tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target.name, Mode: mode}); err != nil {
			return l, err
		}
	}
	if err := tw.Close(); err != nil {
		return l, err
	}
	if err := gz.Close(); err != nil {
		return l, err
	}
	if err := bw.Flush(); err != nil {
		return l, err
	}
	if err := tmp.Close(); err != nil {
		return l, err
	}
	hexd := hex.EncodeToString(compressed.Sum(nil))
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, hexd)); err != nil {
		return l, err
	}
	l.digest, l.size = "sha256:"+hexd, counted.n
	l.diffID = "sha256:" + hex.EncodeToString(diff.Sum(nil))
	return l, nil
}

// fileContent writes size bytes of the given kind to w.
func fileContent(w io.Writer, rng *rand.Rand, noise *rand.ChaCha8, corpus, buf []byte, kind int, size int64) error {
	for size > 0 {
		n := min(int64(len(buf)), size)
		chunk := buf[:n]
		switch kind {
		case kindText:
			fillText(rng, corpus, chunk)
		case kindRandom:
			_, _ = noise.Read(chunk)
		case kindBinary:
			// Blocks of 512 bytes: random, zeros or a repeated record.
			for off := 0; off < len(chunk); off += 512 {
				b := chunk[off:min(off+512, len(chunk))]
				switch rng.IntN(3) {
				case 0:
					_, _ = noise.Read(b)
				case 1:
					clear(b)
				default:
					rec := uint64(rng.Uint32())
					for j := range b {
						b[j] = byte(rec >> (8 * (j % 4)))
					}
				}
			}
		}
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

// fillText fills b with pieces of corpus from random offsets: text with
// the statistics of the corpus, no long repeats a compressor could find.
func fillText(rng *rand.Rand, corpus, b []byte) {
	for len(b) > 0 {
		n := min(len(b), 256+rng.IntN(3840))
		off := rng.IntN(len(corpus) - n)
		copy(b, corpus[off:off+n])
		b = b[n:]
	}
}

// textCorpus returns n bytes of words from a vocabulary of 4096, in lines.
func textCorpus(rng *rand.Rand, n int) []byte {
	vocab := make([]string, 4096)
	for k := range vocab {
		vocab[k] = word(rng)
	}
	var b strings.Builder
	b.Grow(n + 64)
	col := 0
	for b.Len() < n {
		// Zipf-like: low indexes far more often.
		w := vocab[int(float64(len(vocab))*math.Pow(rng.Float64(), 3))]
		b.WriteString(w)
		col += len(w) + 1
		if col > 72 {
			b.WriteByte('\n')
			col = 0
		} else {
			b.WriteByte(' ')
		}
	}
	return []byte(b.String()[:n])
}

var syllables = []string{"ka", "lo", "mi", "ne", "ra", "to", "su", "pe", "di", "an", "or", "el", "ix", "ur", "bo", "ca", "fu", "ge", "hi", "ja"}

// word returns a made-up word of 1 to 4 syllables.
func word(rng *rand.Rand) string {
	n := 1 + rng.IntN(4)
	var b strings.Builder
	for range n {
		b.WriteString(syllables[rng.IntN(len(syllables))])
	}
	return b.String()
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
