package index

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/clipd/clipd/zran"
)

// windowsTestArchive is clipTestArchive whose gzip layer has a real
// decompression index with several windows.
func windowsTestArchive(t *testing.T) *Archive {
	t.Helper()
	_, gz, _, x := gzippedSpans(t, 2)
	if x.WindowBytes() == 0 || len(x.Spans) < 4 {
		t.Fatalf("fixture index has %d spans, %d window bytes", len(x.Spans), x.WindowBytes())
	}
	a := clipTestArchive()
	a.Layers[0].Size, a.Layers[0].Spans = int64(len(gz)), x
	return a
}

// Separate windows: the .clip names the windows file by digest and size,
// every span's window is found there by its reference and verifies, and the
// inline original and the separate file describe the same spans. clip
// still loads the file.
func TestWindowsSeparateRoundTrip(t *testing.T) {
	a := windowsTestArchive(t)
	dir := t.TempDir()
	inline, sep := filepath.Join(dir, "inline.clip"), filepath.Join(dir, "sep.clip")
	if err := WriteFile(inline, a); err != nil {
		t.Fatal(err)
	}
	w, err := WriteFileWith(sep, a, WriteOptions{Windows: WindowsSeparate})
	if err != nil {
		t.Fatal(err)
	}
	if a.Layers[0].Spans.External() || a.Windows != nil {
		t.Fatal("WriteFileWith changed the archive it wrote")
	}
	blob, err := os.ReadFile(WindowsPath(sep))
	if err != nil {
		t.Fatal(err)
	}
	if w.Windows == nil || w.Windows.Size != int64(len(blob)) || int64(len(blob)) != a.Layers[0].Spans.WindowBytes() {
		t.Fatalf("written %+v; windows file of %d bytes, index has %d", w.Windows, len(blob), a.Layers[0].Spans.WindowBytes())
	}
	fi, _ := os.Stat(inline)
	// The .clip lost the windows and gained a digest per span plus the
	// blob's name in the JSON.
	if limit := fi.Size() - int64(len(blob)) + int64(len(a.Layers[0].Spans.Spans))*(spanRefRecordSize-spanRecordSize) + 256; w.ClipSize > limit {
		t.Errorf(".clip %d + windows %d bytes, inline file %d", w.ClipSize, len(blob), fi.Size())
	}

	got, err := Open(sep)
	if err != nil {
		t.Fatal(err)
	}
	if got.Extension != ExtensionVersionWindows || got.Windows == nil || got.Windows.Digest != w.Windows.Digest || got.FileSize != w.ClipSize {
		t.Fatalf("opened extension %d, windows %+v, size %d", got.Extension, got.Windows, got.FileSize)
	}
	x, orig := got.Layers[0].Spans, a.Layers[0].Spans
	if !x.External() || got.Layers[1].Spans != nil {
		t.Fatal("layer 0 should have external windows, layer 1 no index")
	}
	d, err := zran.NewSpanDecoder()
	if err != nil {
		t.Fatal(err)
	}
	f, err := got.OpenWindowsFile()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, r := range x.Refs {
		want, err := orig.Span(i, d)
		if err != nil {
			t.Fatal(err)
		}
		var win []byte
		if r.Length > 0 {
			win = make([]byte, r.Length)
			if _, err := f.ReadAt(win, r.Offset); err != nil {
				t.Fatal(err)
			}
			if err := VerifyWindow(r, win); err != nil {
				t.Fatalf("span %d: %v", i, err)
			}
		}
		s, err := x.ExpandSpan(i, d, win)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(s.Window, want.Window) || s.COff != want.COff || s.Digest != want.Digest {
			t.Fatalf("span %d differs from the inline index", i)
		}
	}
	bad := append([]byte(nil), blob[x.Refs[1].Offset:x.Refs[1].Offset+x.Refs[1].Length]...)
	bad[0] ^= 1
	if err := VerifyWindow(x.Refs[1], bad); err == nil {
		t.Fatal("a flipped window verified")
	}

	// An archive read with external windows is written again as it is;
	// it cannot be inlined (its windows are not in memory).
	again := filepath.Join(dir, "again.clip")
	if w2, err := WriteFileWith(again, got, WriteOptions{Windows: WindowsSeparate}); err != nil || w2.WindowsPath != "" || w2.Windows.Digest != w.Windows.Digest {
		t.Fatalf("rewrite: %+v, %v", w2, err)
	}
	b1, _ := os.ReadFile(sep)
	b2, _ := os.ReadFile(again)
	if !bytes.Equal(b1, b2) {
		t.Error("writing what was read gives other bytes")
	}
	if err := WriteFile(filepath.Join(dir, "x.clip"), got); err == nil || !strings.Contains(err.Error(), "cannot be written inline") {
		t.Fatalf("inline write of external windows: %v", err)
	}
	if _, err := WriteFileWith(filepath.Join(dir, "y.clip"), a, WriteOptions{Windows: "elsewhere"}); err == nil {
		t.Fatal("unknown windows mode accepted")
	}

	if err := clip.SetLogLevel("warn"); err != nil {
		t.Fatal(err)
	}
	if _, err := clip.NewClipArchiver().ExtractMetadata(sep); err != nil {
		t.Fatalf("clip cannot load a .clip with separate windows: %v", err)
	}
}

// openSeparateWindows writes windowsTestArchive to a .clip with separate
// windows in a fresh directory and opens it again.
func openSeparateWindows(t *testing.T) (dir, sep string, got *Archive) {
	t.Helper()
	dir = t.TempDir()
	sep = filepath.Join(dir, "sep.clip")
	if _, err := WriteFileWith(sep, windowsTestArchive(t), WriteOptions{Windows: WindowsSeparate}); err != nil {
		t.Fatal(err)
	}
	got, err := Open(sep)
	if err != nil {
		t.Fatal(err)
	}
	return dir, sep, got
}

// A window reference outside the blob the extension names is refused when
// the file is opened.
func TestWindowsRefOutsideBlob(t *testing.T) {
	dir, _, got := openSeparateWindows(t)
	got.Windows.Size -= 10
	short := filepath.Join(dir, "short.clip")
	if _, err := WriteFileWith(short, got, WriteOptions{Windows: WindowsSeparate}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(short); err == nil || !strings.Contains(err.Error(), "outside the windows blob") {
		t.Fatalf("Open with a window past the blob: %v", err)
	}
}

// The windows file beside a .clip is used only when it is a regular file,
// not a symlink, of the recorded size and owned by the .clip's owner.
func TestOpenWindowsFileChecks(t *testing.T) {
	dir, sep, got := openSeparateWindows(t)
	wp := WindowsPath(sep)
	blob, _ := os.ReadFile(wp)
	check := func(name, want string) {
		t.Helper()
		f, err := got.OpenWindowsFile()
		if err == nil {
			f.Close()
		}
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: OpenWindowsFile: %v, want %q", name, err, want)
		}
	}
	check("valid", "")
	os.Chown(wp, 4242, 4242)
	if os.Getuid() == 0 {
		check("other owner", "owned by uid 4242")
	}
	os.Remove(wp)
	check("absent", "no such file")
	os.WriteFile(filepath.Join(dir, "real"), blob, 0o644)
	os.Symlink(filepath.Join(dir, "real"), wp)
	check("symlink", "too many levels of symbolic links")
	os.Remove(wp)
	os.WriteFile(wp, blob[1:], 0o644)
	check("size", "the index says")
}
