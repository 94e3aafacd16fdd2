package zran

import (
	"bytes"
	"io"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func zstdFrames(t *testing.T, parts ...[]byte) []byte {
	t.Helper()
	var out []byte
	for i, p := range parts {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(i%2 == 0), zstd.WithSingleSegment(i%3 == 0))
		if err != nil {
			t.Fatal(err)
		}
		out = enc.EncodeAll(p, out)
	}
	return out
}

func TestZstdFrameIndex(t *testing.T) {
	data := corpus(t, 3<<20, 11)
	parts := [][]byte{data[:1<<20], data[1<<20 : 1<<20], data[1<<20 : 2<<20], data[2<<20:]}
	stream := zstdFrames(t, parts...)
	// A skippable frame in the middle must be passed over.
	skip := []byte{0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3}
	stream = append(stream, skip...)
	stream = append(stream, zstdFrames(t, data[:4096])...)
	want := append(append([]byte(nil), data...), data[:4096]...)

	var frames []Frame
	r, err := NewZstdReader(bytes.NewReader(stream), func(f Frame) { frames = append(frames, f) })
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("decoded %d bytes, want %d", len(got), len(want))
	}
	if len(frames) != 5 {
		t.Fatalf("%d frames, want 5: %+v", len(frames), frames)
	}
	for i, f := range frames {
		rr, err := ResumeZstd(bytes.NewReader(stream[f.COff:f.COff+f.CLen]), f.UOff)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rr)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(b, want[f.UOff:f.UOff+f.ULen]) {
			t.Fatalf("frame %d resumed bytes differ", i)
		}
	}
}

func TestZstdCLIFrames(t *testing.T) {
	data := corpus(t, 2<<20, 12)
	cmd := exec.Command("zstd", "-q", "-c", "-3")
	cmd.Stdin = bytes.NewReader(data)
	one, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd CLI: %v (install the zstd package)", err)
	}
	stream := append(append([]byte(nil), one...), one...)
	var frames []Frame
	r, _ := NewZstdReader(bytes.NewReader(stream), func(f Frame) { frames = append(frames, f) })
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(append([]byte(nil), data...), data...)) || len(frames) != 2 || frames[1].UOff != int64(len(data)) {
		t.Fatalf("frames %+v", frames)
	}
}

func TestZstdCorrupt(t *testing.T) {
	stream := zstdFrames(t, corpus(t, 1<<20, 13))
	for _, bad := range [][]byte{stream[:len(stream)/2], stream[:3], append([]byte{1, 2, 3, 4}, stream...)} {
		r, _ := NewZstdReader(bytes.NewReader(bad), nil)
		if _, err := io.ReadAll(r); err == nil {
			t.Fatalf("corrupt stream of %d bytes decoded without error", len(bad))
		}
	}
}
