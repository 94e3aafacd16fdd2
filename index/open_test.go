package index

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/beam-cloud/clip/pkg/common"
)

// clipHeaderBytes encodes a header with the given sections.
func clipHeaderBytes(t testing.TB, indexPos, indexLen, siPos, siLen int64) []byte {
	h := common.ClipArchiveHeader{
		ClipFileFormatVersion: common.ClipFileFormatVersion,
		IndexPos:              indexPos, IndexLength: indexLen,
		StorageInfoPos: siPos, StorageInfoLength: siLen,
	}
	copy(h.StartBytes[:], common.ClipFileStartBytes)
	b, err := clipEncodeHeader(&h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// clipExpectError opens b and requires an error naming the file and
// containing want.
func clipExpectError(t *testing.T, name string, b []byte, want string) {
	t.Helper()
	p, a, err := clipOpenBytes(t, b)
	switch {
	case err == nil:
		t.Errorf("%s: Open succeeded: %d nodes", name, len(a.Nodes))
	case !strings.Contains(err.Error(), p):
		t.Errorf("%s: error %q does not name the file", name, err)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: error %q does not say %q", name, err, want)
	}
}

func TestOpenHostileHeader(t *testing.T) {
	pad := make([]byte, 1234-common.ClipHeaderLength)
	cases := []struct {
		name                             string
		indexPos, indexLen, siPos, siLen int64
		want                             string
	}{
		{"huge index length", 54, 1 << 62, 0, 0, "index length 4611686018427387904 exceeds file size 1234"},
		{"negative index length", 54, -5, 0, 0, "index length -5 is negative"},
		{"negative index position", -1, 10, 0, 0, "index position -1 is negative"},
		{"index past end", 1200, 100, 0, 0, "index at 1200+100 runs past end of file (size 1234)"},
		{"index overflow", 1<<63 - 10, 100, 0, 0, "index at"},
		{"index in header", 10, 100, 0, 0, "overlaps the 54-byte header"},
		{"empty index", 54, 0, 0, 0, "index is empty"},
		{"huge storage info", 54, 100, 154, 1 << 62, "storage info length 4611686018427387904 exceeds file size 1234"},
		{"negative storage info", 54, 100, -154, 10, "storage info position -154 is negative"},
		{"overlapping sections", 54, 100, 100, 100, "overlaps storage info"},
	}
	for _, c := range cases {
		b := append(clipHeaderBytes(t, c.indexPos, c.indexLen, c.siPos, c.siLen), pad...)
		clipExpectError(t, c.name, b, c.want)
	}
	bad := clipHeaderBytes(t, 54, 1, 0, 0)
	bad[0] = 'X'
	clipExpectError(t, "bad magic", append(bad, pad...), "bad magic")
	bad = clipHeaderBytes(t, 54, 1, 0, 0)
	bad[9] = 2
	clipExpectError(t, "bad version", append(bad, pad...), "unsupported clip header version 2")
	clipExpectError(t, "short", bad[:20], "too short")
}

func TestOpenTruncated(t *testing.T) {
	_, full := clipWriteTestFile(t, clipTestArchive())
	h, err := clipDecodeHeader(full)
	if err != nil {
		t.Fatal(err)
	}
	sectionsEnd := h.StorageInfoPos + h.StorageInfoLength
	for n := 0; n < len(full); n++ {
		// Every length through the parser, every 50th through a real file.
		p := "input"
		a, err := openClip(bytes.NewReader(full[:n]), int64(n))
		if n%50 == 0 {
			p, a, err = clipOpenBytes(t, full[:n])
		}
		if int64(n) < sectionsEnd {
			if err == nil {
				t.Fatalf("truncated to %d of %d bytes: Open succeeded", n, len(full))
			}
			if n%50 == 0 && !strings.Contains(err.Error(), p) {
				t.Fatalf("truncated to %d: error %q does not name the file", n, err)
			}
			continue
		}
		// Cut inside the extension, the trailer is gone: what is left is
		// a complete clip-written file.
		if err != nil || a.Extension != 0 {
			t.Fatalf("truncated to %d (clip sections end at %d): err %v", n, sectionsEnd, err)
		}
	}
}

func TestOpenGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	_, valid := clipWriteTestFile(t, clipTestArchive())
	for i := 0; i < 3000; i++ {
		var b []byte
		switch i % 3 {
		case 0: // pure noise
			b = make([]byte, rng.IntN(4096))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		case 1: // a valid header followed by noise
			b = append(clipHeaderBytes(t, 54, int64(rng.IntN(300)), 0, 0), make([]byte, 300)...)
			for j := 54; j < len(b); j++ {
				b[j] = byte(rng.Uint32())
			}
		case 2: // a valid file with a few bytes flipped
			b = bytes.Clone(valid)
			for k := 0; k < 1+rng.IntN(8); k++ {
				b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
			}
		}
		p := "input"
		a, err := openClip(bytes.NewReader(b), int64(len(b)))
		if i%20 == 0 {
			p, a, err = clipOpenBytes(t, b)
		}
		if err != nil && i%20 == 0 && !strings.Contains(err.Error(), p) {
			t.Fatalf("input %d: error %q does not name the file", i, err)
		}
		if err == nil {
			clipCheckInvariants(t, a, int64(len(b)))
		}
	}
}

// clipCheckInvariants is what every successfully opened archive promises.
func clipCheckInvariants(t testing.TB, a *Archive, size int64) {
	t.Helper()
	if len(a.Nodes) == 0 || a.Nodes[0].Path != "/" || a.Nodes[0].Attr.Mode&clipModeTypeMask != clipModeDir {
		t.Fatalf("no directory root first")
	}
	for i, n := range a.Nodes {
		if i > 0 && n.Path <= a.Nodes[i-1].Path {
			t.Fatalf("nodes not sorted: %q after %q", n.Path, a.Nodes[i-1].Path)
		}
		if n.Attr.Mode&clipModeTypeMask == 0 {
			t.Fatalf("%q has no file type", n.Path)
		}
		if n.Layer >= len(a.Layers) || (n.Layer >= 0 && !clipIsRegular(n)) {
			t.Fatalf("%q: layer %d", n.Path, n.Layer)
		}
		if n.Layer >= 0 && a.Layers[n.Layer].Embedded && (n.Offset < 0 || n.Offset+int64(n.Attr.Size) > size) {
			t.Fatalf("%q: embedded data at %d+%d outside %d", n.Path, n.Offset, n.Attr.Size, size)
		}
	}
}

func TestOpenCorruptGob(t *testing.T) {
	_, valid := clipWriteTestFile(t, clipTestArchive())
	h, _ := clipDecodeHeader(valid)

	b := bytes.Clone(valid)
	for i := h.IndexPos; i < h.IndexPos+h.IndexLength; i += 7 {
		b[i] = 0xff
	}
	clipExpectError(t, "index", b, "decode index")

	b = bytes.Clone(valid)
	for i := h.StorageInfoPos; i < h.StorageInfoPos+h.StorageInfoLength; i += 5 {
		b[i] = 0x80
	}
	clipExpectError(t, "storage info", b, "decode storage info")

	// A storage wrapper of a type clip never wrote.
	var w bytes.Buffer
	if err := gob.NewEncoder(&w).Encode(common.StorageInfoWrapper{Type: "gcs", Data: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	idx := valid[h.IndexPos : h.IndexPos+h.IndexLength]
	b = append(clipHeaderBytes(t, 54, h.IndexLength, 54+h.IndexLength, int64(w.Len())), idx...)
	clipExpectError(t, "storage type", append(b, w.Bytes()...), `unsupported storage "gcs"`)
}

// clipHugeCountIndex is an index whose node count claims 2^40 entries.
func clipHugeCountIndex(t testing.TB) []byte {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode([]*common.ClipNode{{Path: "/"}}); err != nil {
		t.Fatal(err)
	}
	var out []byte
	b := buf.Bytes()
	for len(b) > 0 {
		n, rest, _ := gobUint(b)
		msg := rest[:n]
		b = rest[n:]
		if id, _, _ := gobUint(msg); id&1 == 1 { // type definition: keep
			out = append(append(out, gobPutUint(n)...), msg...)
			continue
		}
		id := msg[0:1] // small type ids fit one byte
		if msg[0] >= 0x80 {
			id = msg[0 : 1+int(-int8(msg[0]))]
		}
		body := append(append(bytes.Clone(id), 0), gobPutUint(1<<40)...)
		body = append(body, bytes.Repeat([]byte{0}, 20)...)
		out = append(append(out, gobPutUint(uint64(len(body)))...), body...)
	}
	return out
}

func gobPutUint(v uint64) []byte {
	if v < 0x80 {
		return []byte{byte(v)}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	i := 0
	for i < 7 && b[i] == 0 {
		i++
	}
	return append([]byte{byte(-int8(8 - i))}, b[i:]...)
}

func TestOpenHugeNodeCount(t *testing.T) {
	idx := clipHugeCountIndex(t)
	b := append(clipHeaderBytes(t, 54, int64(len(idx)), 0, 0), idx...)
	clipExpectError(t, "huge count", b, "index claims 1099511627776 nodes")
}

// clipHostileMapStorage is a v2 file whose OCIStorageInfo claims a map of
// 2^30 entries: decoded into common.OCIStorageInfo, gob would size the map
// from that count before reading a single entry.
func clipHostileMapStorage(t testing.TB) []byte {
	var inner bytes.Buffer
	info := common.OCIStorageInfo{Layers: []string{"sha256:x"}, DecompressedHashByLayer: map[string]string{"KEYMARK": "v"}}
	if err := gob.NewEncoder(&inner).Encode(info); err != nil {
		t.Fatal(err)
	}
	var data []byte
	b := inner.Bytes()
	for len(b) > 0 {
		n, rest, _ := gobUint(b)
		msg := rest[:n]
		b = rest[n:]
		if i := bytes.Index(msg, []byte("\x01\x07KEYMARK")); i >= 0 {
			msg = append(append(bytes.Clone(msg[:i]), gobPutUint(1<<30)...), msg[i+1:]...)
		}
		data = append(append(data, gobPutUint(uint64(len(msg)))...), msg...)
	}
	var w bytes.Buffer
	if err := gob.NewEncoder(&w).Encode(common.StorageInfoWrapper{Type: "oci", Data: data}); err != nil {
		t.Fatal(err)
	}
	var idx bytes.Buffer
	if err := gob.NewEncoder(&idx).Encode([]*common.ClipNode{{Path: "/", NodeType: common.DirNode}}); err != nil {
		t.Fatal(err)
	}
	out := clipHeaderBytes(t, 54, int64(idx.Len()), 54+int64(idx.Len()), int64(w.Len()))
	return append(append(out, idx.Bytes()...), w.Bytes()...)
}

func TestOpenHostileAllocation(t *testing.T) {
	pad := make([]byte, 100-common.ClipHeaderLength)
	idx := clipHugeCountIndex(t)
	inputs := map[string][]byte{
		"index length 1<<62":   append(clipHeaderBytes(t, 54, 1<<62, 0, 0), pad...),
		"storage length 1<<62": append(clipHeaderBytes(t, 54, 10, 64, 1<<62), pad...),
		"node count 2^40":      append(clipHeaderBytes(t, 54, int64(len(idx)), 0, 0), idx...),
		"map count 2^30":       clipHostileMapStorage(t),
		"extension length 2^62": func() []byte {
			b := append(clipHeaderBytes(t, 54, 10, 0, 0), pad...)
			return append(b, extEncodeTrailer(extTrailer{Version: 1, Offset: 60, Length: 1 << 62})...)
		}(),
	}
	for name, b := range inputs {
		p := filepath.Join(t.TempDir(), "hostile.clip")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := Open(p)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Errorf("%s: Open succeeded", name)
		}
		const limit = 2 << 20
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
			t.Errorf("%s (%d bytes): Open allocated %d bytes, want < %d (err %v)", name, len(b), alloc, limit, err)
		} else {
			t.Logf("%s (%d bytes): %d bytes allocated: %v", name, len(b), alloc, err)
		}
	}
}

func TestOpenMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.clip")
	if _, err := Open(p); err == nil || !os.IsNotExist(err) || !strings.Contains(err.Error(), p) {
		t.Errorf("err = %v", err)
	}
}

func TestOpenRejectsBadNodes(t *testing.T) {
	l := "sha256:" + strings.Repeat("1", 64)
	info := common.OCIStorageInfo{Layers: []string{l}}
	for name, c := range map[string]struct {
		node *common.ClipNode
		want string
	}{
		"relative":  {&common.ClipNode{Path: "etc", NodeType: common.DirNode}, "not absolute and clean"},
		"unclean":   {&common.ClipNode{Path: "/etc/../x", NodeType: common.DirNode}, "not absolute and clean"},
		"type":      {&common.ClipNode{Path: "/x", NodeType: "socket"}, `unknown node type "socket"`},
		"mismatch":  {&common.ClipNode{Path: "/x", NodeType: common.DirNode, Attr: clipAttrMode(0o100644)}, "type dir with mode"},
		"dir file":  {&common.ClipNode{Path: "/x", NodeType: common.FileNode, Attr: clipAttrMode(0o040755)}, "type file with mode"},
		"no remote": {&common.ClipNode{Path: "/x", NodeType: common.FileNode, Attr: clipAttrSize(0o100644, 10)}, "no data reference"},
		"negative":  {&common.ClipNode{Path: "/x", NodeType: common.FileNode, Attr: clipAttrSize(0o100644, 10), Remote: &common.RemoteRef{LayerDigest: l, UOffset: -1}}, "negative data range"},
	} {
		p := clipRemoteArchive(t, info, []*common.ClipNode{c.node})
		_, err := Open(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
		}
	}
	// A root that is not a directory.
	p := clipRemoteArchive(t, info, []*common.ClipNode{{Path: "/", NodeType: common.SymLinkNode, Target: "x"}})
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), "root node") {
		t.Errorf("symlink root: err = %v", err)
	}
}

func TestOpenFuzzSeedsValid(t *testing.T) {
	// The committed corpus must keep real, valid files among its seeds, or
	// the fuzzer only ever explores the error paths.
	for name, format := range map[string]int{"clipd-small": FormatOCI, "clip-v1": FormatEmbedded, "clip-v2-digest": FormatOCI} {
		raw, err := os.ReadFile(filepath.Join("testdata/fuzz/FuzzOpen", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(raw), "\n", 3)
		if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a fuzz corpus file", name)
		}
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, a, err := clipOpenBytes(t, []byte(s))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if a.Format != format || len(a.Nodes) < 3 {
			t.Errorf("%s: format %d, %d nodes", name, a.Format, len(a.Nodes))
		}
	}
}
