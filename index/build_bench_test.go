package index

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/clipd/clipd/internal/testenv"
)

// BenchmarkBuild indexes the python tag of the debian-python layout
// (testenv.DebianPythonLayout: two gzip layers, 65 MB) at 1 MiB and 4 MiB spans, and runs `gzip -dc`
// over the same blobs in the same run as the baseline. Besides MB/s of
// compressed input it reports the decompression index overhead in bytes per
// GiB of uncompressed layer, and the bytes a node downloads before a mount
// is ready as a share of the compressed image (upfront-%).
//
//	go test ./index -run XXX -bench Build -benchtime 3x
func BenchmarkBuild(b *testing.B) {
	dir := testenv.DebianPythonLayout(b)
	img := imageFromLayout(b, dir, "python")
	layers, _ := img.Layers()
	var csize int64
	var blobs []string
	for _, l := range layers {
		n, _ := l.Size()
		d, _ := l.Digest()
		csize += n
		blobs = append(blobs, dir+"/blobs/sha256/"+d.Hex)
	}
	for _, span := range []int64{1 << 20, 4 << 20} {
		b.Run("clipd-index-span-"+sizeName(span), func(b *testing.B) {
			b.SetBytes(csize)
			var a *Archive
			for i := 0; i < b.N; i++ {
				var err error
				if a, err = Build(context.Background(), img, BuildOptions{SpanSize: span}); err != nil {
					b.Fatal(err)
				}
			}
			var overhead, usize int64
			for _, l := range a.Layers {
				overhead += l.Spans.EncodedSize()
				usize += l.Spans.USize
			}
			b.ReportMetric(float64(overhead)/float64(usize)*(1<<30)/(1<<20), "index-MiB/GiB")
			// What a cold node downloads before a mount is ready: the .clip
			// without its windows, compressed as it travels.
			out := filepath.Join(b.TempDir(), "img.clip")
			if _, err := WriteFileWith(out, a, WriteOptions{Windows: WindowsSeparate}); err != nil {
				b.Fatal(err)
			}
			up, err := CompressedSize(out)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(up)*100/float64(csize), "upfront-%")
		})
	}
	b.Run("gzip-dc", func(b *testing.B) {
		b.SetBytes(csize)
		for i := 0; i < b.N; i++ {
			for _, blob := range blobs {
				if err := exec.Command("sh", "-c", "gzip -dc < "+blob+" > /dev/null").Run(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

func sizeName(n int64) string {
	return map[int64]string{1 << 20: "1MiB", 4 << 20: "4MiB"}[n]
}
