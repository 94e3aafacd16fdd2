package index

import (
	"bytes"
	"encoding/gob"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/beam-cloud/clip/pkg/common"
)

// sampleClipNodes exercise every field the fast decoder fills, zero and
// non-zero, with and without a RemoteRef.
func sampleClipNodes() []*common.ClipNode {
	var out []*common.ClipNode
	root := &common.ClipNode{NodeType: common.DirNode, Path: "/"}
	root.Attr.Mode, root.Attr.Ino, root.Attr.Nlink = clipModeDir|0o755, 1, 3
	out = append(out, root)
	for i := range 50 {
		n := &common.ClipNode{NodeType: common.FileNode, Path: "/f" + string(rune('a'+i%26)) + string(rune('a'+i/26))}
		n.Attr.Mode, n.Attr.Ino, n.Attr.Size, n.Attr.Nlink = clipModeRegular|0o4755, uint64(i+2), uint64(i*1000), 1
		n.Attr.Mtime, n.Attr.Mtimensec, n.Attr.Atime, n.Attr.Ctime = 1700000000+uint64(i), 123456789, 5, 6
		n.Attr.Uid, n.Attr.Gid, n.Attr.Rdev, n.Attr.Blksize, n.Attr.Blocks, n.Attr.Flags = uint32(i), 1<<31, 7, 4096, 8, 0
		switch i % 4 {
		case 0:
			n.Remote = &common.RemoteRef{LayerDigest: "sha256:aaaa", UOffset: int64(i) * 512, ULength: int64(i * 1000)}
		case 1:
			n.Remote = &common.RemoteRef{LayerDigest: "sha256:bbbb", UOffset: 0, ULength: 0}
			n.ContentHash = "abc"
		case 2:
			n.NodeType, n.Target = common.SymLinkNode, "../x/y"
			n.Attr.Mode = clipModeSymlink | 0o777
		case 3:
			n.DataPos, n.DataLen = -5, 1<<40
		}
		out = append(out, n)
	}
	return out
}

func gobBytes(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gobNodes(b []byte) ([]*common.ClipNode, error) {
	var out []*common.ClipNode
	err := clipGobDecodeReader("index", bytes.NewReader(b), &out)
	return out, err
}

// The fast decoder gives what encoding/gob gives, on clipd's own index of
// debian-python when it is there and on sample nodes of every shape.
func TestFastDecodeMatchesGob(t *testing.T) {
	streams := map[string][]byte{"sample": gobBytes(t, sampleClipNodes())}
	for name, b := range streams {
		want, err := gobNodes(b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := clipFastDecodeIndex(b)
		if err != nil {
			t.Fatalf("%s: fast decoder declined: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: fast decoder differs from gob", name)
		}
	}
}

// A stream whose types differ from clip's (an extra struct field, a field
// of another type) is left to gob.
func TestFastDecodeDeclinesOtherTypes(t *testing.T) {
	type Other struct {
		Path  string
		Extra struct{ A int }
	}
	type WrongType struct {
		Path int
	}
	for name, v := range map[string]any{
		"extra struct": []*Other{{Path: "/", Extra: struct{ A int }{1}}},
		"wrong type":   []*WrongType{{Path: 1}},
		"not a slice":  common.ClipNode{Path: "/"},
	} {
		if _, err := clipFastDecodeIndex(gobBytes(t, v)); err != errGobFallback {
			t.Errorf("%s: got %v, want errGobFallback", name, err)
		}
	}
	// A field clipd's types lack but of a basic type is skipped, as gob does.
	type Attr struct {
		Ino     uint64
		Padding uint32
	}
	type Node struct {
		NodeType common.ClipNodeType
		Path     string
		Attr     Attr
	}
	b := gobBytes(t, []*Node{{NodeType: common.DirNode, Path: "/", Attr: Attr{Ino: 1, Padding: 9}}})
	got, err := clipFastDecodeIndex(b)
	want, gerr := gobNodes(b)
	if err != nil || gerr != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("skipped field: fast %v (%v), gob %v (%v)", got, err, want, gerr)
	}
}

// Damaged streams: the fast decoder either declines or agrees with gob;
// it never accepts what gob refuses.
func TestFastDecodeDamaged(t *testing.T) {
	good := gobBytes(t, sampleClipNodes())
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		b := bytes.Clone(good)
		switch i % 3 {
		case 0:
			b = b[:rng.IntN(len(b))]
		case 1:
			b[rng.IntN(len(b))] ^= byte(1 << rng.IntN(8))
		case 2:
			p := rng.IntN(len(b))
			b[p] = byte(rng.IntN(256))
			b[rng.IntN(len(b))] = 0
		}
		got, err := clipFastDecodeIndex(b)
		if err != nil {
			continue
		}
		want, gerr := gobNodes(b)
		if gerr != nil {
			t.Fatalf("case %d: fast decoder accepted a stream gob refuses (%v)", i, gerr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("case %d: fast decoder differs from gob", i)
		}
	}
}
