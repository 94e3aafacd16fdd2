package index

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
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

// streamDecode decodes section b as Open does, the node list streamed
// through a window when b is larger than the prologue read: the nodes,
// whether they were streamed, and errGobFallback when the fast decoder
// gave up during the walk.
func streamDecode(t *testing.T, b []byte) ([]*common.ClipNode, *clipNodes, error) {
	t.Helper()
	c, err := clipDecodeIndex(bytes.NewReader(b), clipSection{name: "index", len: int64(len(b)), max: MaxIndexBytes})
	if err != nil {
		return nil, nil, err
	}
	var out []*common.ClipNode
	err = c.each(func(cn *common.ClipNode) error {
		n := *cn
		if cn.Remote != nil {
			rr := *cn.Remote
			n.Remote = &rr
		}
		out = append(out, &n)
		return nil
	})
	return out, c, err
}

// manyClipNodes repeats the sample nodes, renamed, until the stream is
// several windows long.
func manyClipNodes(n int) []*common.ClipNode {
	sample := sampleClipNodes()
	out := []*common.ClipNode{sample[0]}
	for i := range n {
		cn := *sample[1+i%(len(sample)-1)]
		cn.Path = fmt.Sprintf("/dir%04d/file-with-a-longer-name-%06d", i/1000, i)
		out = append(out, &cn)
	}
	return out
}

// A node list larger than the prologue is decoded through a window as it
// is read, with the same result as gob; a node too large for the window
// makes the walk give up, and the fallback reads the section again for gob.
func TestStreamedDecodeMatchesGob(t *testing.T) {
	nodes := manyClipNodes(40_000)
	b := gobBytes(t, nodes)
	if len(b) < 2*gobWindow {
		t.Fatalf("stream of %d bytes: want several windows", len(b))
	}
	want, err := gobNodes(b)
	if err != nil {
		t.Fatal(err)
	}
	got, c, err := streamDecode(t, b)
	if err != nil {
		t.Fatalf("streamed decode: %v", err)
	}
	if c.stream == nil || c.raw != nil {
		t.Fatal("the node list was read whole, not streamed")
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("streamed decode differs from gob")
	}
	// Walking twice gives the same nodes (each may run again).
	if again, _, err := streamDecode(t, b); err != nil || !reflect.DeepEqual(again, want) {
		t.Fatalf("second walk: %v", err)
	}

	// A node whose encoding fits the refill margin decodes from the
	// window; one beyond it gives the walk up, and gob decodes it.
	for _, size := range []int{gobRefillAt - 1024, gobWindow + 10} {
		big := slices.Clone(nodes)
		n := *big[30_000]
		n.ContentHash = strings.Repeat("h", size)
		big[30_000] = &n
		b := gobBytes(t, big)
		want, err := gobNodes(b)
		if err != nil {
			t.Fatal(err)
		}
		got, c, err := streamDecode(t, b)
		if size < gobRefillAt {
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("%d-byte string: streamed decode %v, or differs from gob", size, err)
			}
			continue
		}
		if err != errGobFallback {
			t.Fatalf("%d-byte string: walk gave %v, want errGobFallback", size, err)
		}
		fb, err := c.fallback()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fb.slice, want) {
			t.Fatalf("%d-byte string: fallback differs from gob", size)
		}
	}
}

// Damage in the streamed part: the walk gives up or agrees with gob, and a
// section that ends early (a short read) is never taken for a whole one.
func TestStreamedDecodeDamaged(t *testing.T) {
	good := gobBytes(t, manyClipNodes(20_000))
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 20 {
		b := bytes.Clone(good)
		p := maxGobPrologue + rng.IntN(len(b)-maxGobPrologue)
		b[p] ^= byte(1 << rng.IntN(8))
		got, _, err := streamDecode(t, b)
		want, gerr := gobNodes(b)
		if err != nil {
			continue
		}
		if gerr != nil {
			t.Fatalf("case %d: streamed decode accepted a stream gob refuses (%v)", i, gerr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("case %d: streamed decode differs from gob", i)
		}
	}
	// The section claims more bytes than the file holds.
	c, err := clipDecodeIndex(bytes.NewReader(good[:len(good)-100]), clipSection{name: "index", len: int64(len(good)), max: MaxIndexBytes})
	if err != nil {
		t.Fatal(err) // the prologue is whole: nothing to refuse yet
	}
	if err := c.each(func(*common.ClipNode) error { return nil }); err != errGobFallback {
		t.Fatalf("short section: walk gave %v, want errGobFallback", err)
	}
	if _, err := c.fallback(); err == nil {
		t.Fatal("short section: fallback read it without error")
	}
}
