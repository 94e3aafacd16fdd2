package index

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Describe writes the human summary `clipd inspect` prints: file, format,
// source, image, layers, node counts by type, total file bytes, and what the
// clipd extension adds.
func Describe(w io.Writer, a *Archive) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	file := a.Path
	if file == "" {
		file = "(in memory)"
	}
	p("file:\t%s\n", file)
	switch a.Format {
	case FormatEmbedded:
		p("format:\t1 (clip v1, data embedded)\n")
	case FormatOCI:
		p("format:\t2 (clip v2, OCI index)\n")
	default:
		p("format:\t%d (unknown)\n", a.Format)
	}
	if src := describeSource(a.Source); src != "" {
		p("source:\t%s\n", src)
	}
	if a.Source.Manifest != "" {
		p("manifest:\t%s\n", a.Source.Manifest)
	}
	if im := a.Image; im != nil {
		if im.Digest != "" {
			p("image digest:\t%s\n", im.Digest)
		}
		if im.OS != "" || im.Architecture != "" {
			p("platform:\t%s/%s\n", im.OS, im.Architecture)
		}
	}

	var dirs, files, symlinks, devices, fifos, sockets int
	var bytes uint64
	for _, n := range a.Nodes {
		switch n.Attr.Mode & clipModeTypeMask {
		case clipModeDir:
			dirs++
		case clipModeRegular:
			files++
			bytes += n.Attr.Size
		case clipModeSymlink:
			symlinks++
		case clipModeChar, clipModeBlock:
			devices++
		case clipModeFIFO:
			fifos++
		case clipModeSocket:
			sockets++
		}
	}
	p("nodes:\t%d (%d dirs, %d files, %d symlinks, %d devices, %d fifos, %d sockets)\n",
		len(a.Nodes), dirs, files, symlinks, devices, fifos, sockets)
	p("file bytes:\t%d (%s)\n", bytes, describeSize(int64(bytes)))

	if a.Extension == 0 {
		p("extension:\tnone (written by clip)\n")
	} else {
		xattrs := 0
		for _, n := range a.Nodes {
			xattrs += len(n.Xattrs)
		}
		recorded := 0
		for _, l := range a.Layers {
			if l.MediaType != "" || l.DiffID != "" {
				recorded++
			}
		}
		indexed := 0
		for _, l := range a.Layers {
			if l.Spans != nil {
				indexed++
			}
		}
		p("extension:\tversion %d: %d xattrs, %d of %d layers recorded, %d with a decompression index\n", a.Extension, xattrs, recorded, len(a.Layers), indexed)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("describe %s: %w", file, err)
	}

	fmt.Fprintf(w, "layers: %d\n", len(a.Layers))
	lw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(lw, "  #\tdigest\tmedia type\tcompression\tsize\tuncompressed\tspans\tspan size\tindex bytes\twindows\n")
	for i, l := range a.Layers {
		digest, mt := l.Digest, l.MediaType
		if l.Embedded {
			digest = "(embedded in the archive)"
		}
		if mt == "" {
			mt = "-"
		}
		usize, spans, spanSize, overhead, windows := "-", "none", "-", "-", "-"
		if x := l.Spans; x != nil {
			usize, spans, spanSize = describeSize(x.USize), fmt.Sprint(len(x.Spans)), describeSize(x.SpanSize)
			overhead = describeSize(x.EncodedSize())
			windows = describeSize(x.WindowBytes()) + " inline"
			if x.External() {
				windows = describeSize(x.WindowBytes()) + " apart"
			}
		}
		fmt.Fprintf(lw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i, digest, mt, l.Compression, describeSize(l.Size), usize, spans, spanSize, overhead, windows)
	}
	if err := lw.Flush(); err != nil {
		return fmt.Errorf("describe %s: %w", file, err)
	}
	var total, overhead int64
	for _, l := range a.Layers {
		if l.Spans != nil {
			total += l.Spans.USize
			overhead += l.Spans.EncodedSize()
		}
	}
	if total > 0 {
		fmt.Fprintf(w, "decompression index: %s for %s uncompressed (%s per GiB)\n",
			describeSize(overhead), describeSize(total), describeSize(int64(float64(overhead)*float64(1<<30)/float64(total))))
	} else {
		fmt.Fprintf(w, "decompression index: none (built on first read of each compressed layer)\n")
	}
	describeFetch(w, a)
	return nil
}

// describeFetch says what a node downloads before a mount is ready (the
// .clip, compressed as it travels) and what it fetches lazily (the windows
// blob, a window with each span that needs it), against the image's
// compressed size: index bytes up front are start-up latency.
func describeFetch(w io.Writer, a *Archive) {
	if a.Format != FormatOCI || a.FileSize == 0 {
		return
	}
	var image, windows int64
	for _, l := range a.Layers {
		image += l.Size
		if l.Spans != nil {
			windows += l.Spans.WindowBytes()
		}
	}
	share := func(n int64) string {
		if image <= 0 {
			return "?"
		}
		return fmt.Sprintf("%.2f%%", float64(n)*100/float64(image))
	}
	up := fmt.Sprintf("%s .clip", describeSize(a.FileSize))
	upBytes := a.FileSize
	if z, err := CompressedSize(a.Path); err == nil {
		up += fmt.Sprintf(", %s compressed as published (%s)", describeSize(z), ClipZstdMediaType)
		upBytes = z
	}
	fmt.Fprintf(w, "up front: %s = %s of %s of layers\n", up, share(upBytes), describeSize(image))
	switch {
	case a.Windows != nil:
		fmt.Fprintf(w, "lazily: %s of windows in %s (%s or the registry), each fetched with its span\n",
			describeSize(a.Windows.Size), a.Windows.Digest, WindowsPath(a.Path))
	case windows > 0:
		fmt.Fprintf(w, "lazily: nothing, the %s of windows are inline (up front)\n", describeSize(windows))
	}
}

func describeSource(s Source) string {
	if s.Layout != "" {
		if s.Reference != "" {
			return "oci-layout:" + s.Layout + ":" + s.Reference
		}
		return "oci-layout:" + s.Layout
	}
	var b strings.Builder
	if s.Registry != "" {
		b.WriteString(s.Registry + "/")
	}
	b.WriteString(s.Repository)
	switch {
	case s.Reference == "":
	case strings.Contains(s.Reference, ":"):
		b.WriteString("@" + s.Reference)
	default:
		b.WriteString(":" + s.Reference)
	}
	return b.String()
}

// describeSize prints n bytes the way operators read them (IEC units).
func describeSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
