package index

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestWriteRoundTrip(t *testing.T) {
	for name, want := range map[string]*Archive{
		"full":        clipTestArchive(),
		"no image":    func() *Archive { a := clipTestArchive(); a.Image = nil; return a }(),
		"no manifest": func() *Archive { a := clipTestArchive(); a.Source.Manifest = ""; return a }(),
		"digest ref": func() *Archive {
			a := clipTestArchive()
			a.Source.Reference = a.Source.Manifest
			return a
		}(),
		"layout": func() *Archive {
			a := clipTestArchive()
			a.Source = Source{Registry: "ignored:5000", Layout: "/srv/oci", Reference: "python"}
			return a
		}(),
	} {
		t.Run(name, func(t *testing.T) { clipCheckRoundTrip(t, want) })
	}
}

func clipCheckRoundTrip(t *testing.T, want *Archive) {
	p, _ := clipWriteTestFile(t, want)
	got, err := Open(p)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got.Path != p || got.Format != FormatOCI || got.Extension != ExtensionVersion {
		t.Errorf("Path, Format, Extension = %q, %d, %d", got.Path, got.Format, got.Extension)
	}
	if !reflect.DeepEqual(got.Source, want.Source) {
		t.Errorf("Source = %+v, want %+v", got.Source, want.Source)
	}
	if !reflect.DeepEqual(got.Layers, want.Layers) {
		t.Errorf("Layers = %+v, want %+v", got.Layers, want.Layers)
	}
	if !reflect.DeepEqual(got.Image, want.Image) {
		t.Errorf("Image = %+v, want %+v", got.Image, want.Image)
	}
	if len(got.Nodes) != len(want.Nodes) {
		t.Fatalf("%d nodes, want %d", len(got.Nodes), len(want.Nodes))
	}
	for i := range want.Nodes {
		if !reflect.DeepEqual(got.Nodes[i], want.Nodes[i]) {
			t.Errorf("node %d:\n got %+v\nwant %+v", i, got.Nodes[i], want.Nodes[i])
		}
	}
	// Writing what was read gives the same bytes: nothing is lost or reordered.
	p2 := filepath.Join(t.TempDir(), "again.clip")
	if err := WriteFile(p2, got); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(p)
	b2, _ := os.ReadFile(p2)
	if string(b1) != string(b2) {
		t.Errorf("rewrite differs: %d vs %d bytes", len(b1), len(b2))
	}
}

func TestWriteLayoutSource(t *testing.T) {
	a := clipTestArchive()
	a.Source = Source{Layout: "/srv/images/debian", Reference: "python", Manifest: "sha256:" + strings.Repeat("b", 64)}
	p, _ := clipWriteTestFile(t, a)
	got, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Source, a.Source) {
		t.Errorf("Source = %+v, want %+v", got.Source, a.Source)
	}
	// clip itself sees no registry: it cannot express a layout.
	md, err := clipExtract(t, p)
	if err != nil {
		t.Fatal(err)
	}
	if info := clipOCIInfo(t, md); info.RegistryURL != "" || info.Reference != "python" {
		t.Errorf("clip sees RegistryURL %q Reference %q", info.RegistryURL, info.Reference)
	}
}

func TestWriteRejects(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]func(a *Archive){
		"format 1":       func(a *Archive) { a.Format = FormatEmbedded },
		"no root":        func(a *Archive) { a.Nodes = a.Nodes[1:] },
		"bad layer":      func(a *Archive) { clipNodeByPath(a, "/etc/passwd").Layer = 9 },
		"duplicate path": func(a *Archive) { a.Nodes = append(a.Nodes, a.Nodes[2]) },
		"relative path":  func(a *Archive) { clipNodeByPath(a, "/etc").Path = "etc" },
		"no file type":   func(a *Archive) { clipNodeByPath(a, "/etc").Attr.Mode = 0o755 },
		"data, no layer": func(a *Archive) { clipNodeByPath(a, "/etc/passwd").Layer = -1 },
	}
	for name, mutate := range cases {
		a := clipTestArchive()
		mutate(a)
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".clip")
		err := WriteFile(p, a)
		if err == nil {
			t.Errorf("%s: WriteFile succeeded", name)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
		if _, serr := os.Stat(p); !os.IsNotExist(serr) {
			t.Errorf("%s: a file was left behind", name)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestWriteReplacesAtomically(t *testing.T) {
	a := clipTestArchive()
	p, _ := clipWriteTestFile(t, a)
	// A reader holding the old file keeps seeing it whole; the new one
	// appears under the same name.
	old, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	a.Source.Reference = "v2"
	if err := WriteFile(p, a); err != nil {
		t.Fatal(err)
	}
	got, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if got.Source.Reference != "v2" {
		t.Errorf("Reference = %q after rewrite", got.Source.Reference)
	}
	fi, _ := old.Stat()
	if oa, err := openClip(old, fi.Size()); err != nil || oa.Source.Reference != "v1" {
		t.Errorf("old file: %v, %+v", err, oa)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
}
