package index

import (
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	p, _ := clipWriteTestFile(t, clipTestArchive())
	a, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := Describe(&sb, a); err != nil {
		t.Fatal(err)
	}
	out := sb.String()
	for _, want := range []string{
		"file:", p,
		"format:", "2 (clip v2, OCI index)",
		"source:", "127.0.0.1:5000/test/img:v1",
		"image digest:", "sha256:aaaa",
		"platform:", "linux/amd64",
		"nodes:", "17 (5 dirs, 7 files, 1 symlinks, 2 devices, 1 fifos, 1 sockets)",
		"file bytes:", "1443 (1.4 KiB)",
		"extension:", "version 2: 3 xattrs, 2 of 2 layers recorded, 0 with a decompression index",
		"layers: 2",
		"sha256:1111", "application/vnd.oci.image.layer.v1.tar+gzip", "gzip", "97.7 KiB",
		"sha256:3333", "zstd", "195.3 KiB",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDescribeClipFile(t *testing.T) {
	a := &Archive{Format: FormatEmbedded, Layers: []Layer{{Embedded: true, Compression: "none", Size: 5 << 20}},
		Nodes: clipNoContent(clipTestArchive().Nodes)[:1]}
	var sb strings.Builder
	if err := Describe(&sb, a); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"(in memory)", "1 (clip v1, data embedded)", "extension:", "none (written by clip)", "(embedded in the archive)", "5.0 MiB"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, sb.String())
		}
	}
}

// inspect says what a node downloads up front and what it fetches lazily,
// for windows apart and inline.
func TestDescribeWindows(t *testing.T) {
	a := windowsTestArchive(t)
	dir := t.TempDir()
	sep, inline := dir+"/sep.clip", dir+"/inline.clip"
	w, err := WriteFileWith(sep, a, WriteOptions{Windows: WindowsSeparate})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(inline, a); err != nil {
		t.Fatal(err)
	}
	describe := func(p string) string {
		t.Helper()
		b, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		if err := Describe(&sb, b); err != nil {
			t.Fatal(err)
		}
		return sb.String()
	}
	out := describe(sep)
	for _, want := range []string{"extension:", "version 3", "apart", "up front:", "compressed as published", "of layers",
		"lazily:", w.Windows.Digest, WindowsPath(sep)} {
		if !strings.Contains(out, want) {
			t.Errorf("separate: output lacks %q:\n%s", want, out)
		}
	}
	out = describe(inline)
	for _, want := range []string{"version 2", "inline", "up front:", "lazily: nothing"} {
		if !strings.Contains(out, want) {
			t.Errorf("inline: output lacks %q:\n%s", want, out)
		}
	}
}
