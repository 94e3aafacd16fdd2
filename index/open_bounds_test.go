package index

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/beam-cloud/clip/pkg/common"
)

// clipSparseHostileHeader is the memory bomb: a 170-byte file whose header
// claims an index of indexLen bytes, extended with a hole so that the claim
// fits the file's apparent size.
func clipSparseHostileHeader(t testing.TB, indexLen int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sparse.clip")
	b := append(clipHeaderBytes(t, common.ClipHeaderLength, indexLen, 0, 0), make([]byte, 170-common.ClipHeaderLength)...)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, common.ClipHeaderLength+indexLen); err != nil {
		t.Fatal(err)
	}
	return p
}

// clipOpenBounded opens p and requires an error containing want, returned
// within a second, having allocated less than 64 MiB.
func clipOpenBounded(t *testing.T, p, want string) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err := Open(p)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%s: %v after %s, %d bytes allocated", filepath.Base(p), err, took, alloc)
	switch {
	case err == nil:
		t.Fatalf("Open of a hostile file succeeded")
	case !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p):
		t.Errorf("error %q does not name the file and say %q", err, want)
	}
	if took > time.Second {
		t.Errorf("Open took %s, want < 1s", took)
	}
	if alloc >= 64<<20 {
		t.Errorf("Open allocated %d bytes, want < 64 MiB", alloc)
	}
}

func TestOpenSparseHostileHeader(t *testing.T) {
	// 4 GiB claimed: over the index bound, refused before any read.
	clipOpenBounded(t, clipSparseHostileHeader(t, 4<<30), "exceeds the limit")
	// Under the bound, the hole is read as zeros: refused on its first
	// bytes, not after reading 200 MiB of them.
	clipOpenBounded(t, clipSparseHostileHeader(t, 200<<20), "empty gob message")
}

func TestOpenSparseExtension(t *testing.T) {
	// A valid file whose trailer points to a 500 MiB body in a hole.
	_, valid := clipWriteTestFile(t, clipTestArchive())
	h, err := clipDecodeHeader(valid)
	if err != nil {
		t.Fatal(err)
	}
	end := h.StorageInfoPos + h.StorageInfoLength
	const body = 500 << 20
	p := filepath.Join(t.TempDir(), "sparse-ext.clip")
	if err := os.WriteFile(p, valid[:end], 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	tr := extEncodeTrailer(extTrailer{Version: ExtensionVersion, JSONLen: 1 << 20, Offset: uint64(end), Length: body})
	if _, err := f.WriteAt(tr, end+body); err != nil {
		t.Fatal(err)
	}
	f.Close()
	clipOpenBounded(t, p, "extension body is not a JSON object")
}

func TestOpenBoundedCounts(t *testing.T) {
	// A node count over MaxNodes in a message long enough to hold it.
	idx := clipHugeCountIndex(t)
	// clipHugeCountIndex pads the value message with zeros after a count of
	// 2^40; rebuild it with MaxNodes+1 and as many bytes.
	var out []byte
	for b := idx; len(b) > 0; {
		n, rest, _ := gobUint(b)
		msg := rest[:n]
		b = rest[n:]
		if id, _, _ := gobUint(msg); id&1 == 1 {
			out = append(append(out, gobPutUint(n)...), msg...)
			continue
		}
		id := msg[0:1]
		if msg[0] >= 0x80 {
			id = msg[0 : 1+int(-int8(msg[0]))]
		}
		body := append(append(bytes.Clone(id), 0), gobPutUint(MaxNodes+1)...)
		body = append(body, make([]byte, MaxNodes+1)...)
		out = append(append(out, gobPutUint(uint64(len(body)))...), body...)
	}
	b := append(clipHeaderBytes(t, 54, int64(len(out)), 0, 0), out...)
	clipExpectError(t, "node count", b, "more than the limit of 1048576")

	// A path longer than PATH_MAX.
	l := "sha256:" + strings.Repeat("1", 64)
	long := "/" + strings.Repeat("x", MaxPathLen)
	p := clipRemoteArchive(t, common.OCIStorageInfo{Layers: []string{l}}, []*common.ClipNode{{Path: long, NodeType: common.DirNode}})
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), "longer than 4096") {
		t.Errorf("long path: err = %v", err)
	}
}

func TestOpenErrorsQuoteNoBytes(t *testing.T) {
	secret := []byte("root:$y$j9T$secretsecret:19000:0:99999:7:::\n")
	p, _, err := clipOpenBytes(t, bytes.Repeat(secret, 4))
	if err == nil {
		t.Fatal("Open of a shadow file succeeded")
	}
	if !strings.Contains(err.Error(), "not a .clip file (bad magic)") {
		t.Errorf("err = %v", err)
	}
	msg := strings.ReplaceAll(err.Error(), p, "")
	for _, frag := range []string{"root", "72 6f 6f 74", "726f6f74", "secret"} {
		if strings.Contains(msg, frag) {
			t.Errorf("error %q quotes the file (%q)", err, frag)
		}
	}
}
