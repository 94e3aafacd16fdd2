package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
)

// clipWithExtension replaces the extension of a valid clipd file: body is
// appended after clip's sections, and edit may spoil the trailer.
func clipWithExtension(t *testing.T, body []byte, edit func(tr *extTrailer)) []byte {
	t.Helper()
	_, valid := clipWriteTestFile(t, clipTestArchive())
	h, err := clipDecodeHeader(valid)
	if err != nil {
		t.Fatal(err)
	}
	end := h.StorageInfoPos + h.StorageInfoLength
	out := append(bytes.Clone(valid[:end]), body...)
	tr := extTrailer{Version: ExtensionVersion, JSONLen: uint32(len(body)), Offset: uint64(end), Length: uint64(len(body)), Sum: sha256.Sum256(body)}
	if edit != nil {
		edit(&tr)
	}
	return append(out, extEncodeTrailer(tr)...)
}

func clipExtBody(t *testing.T, edit func(b *extBody)) []byte {
	t.Helper()
	body, err := extFromArchive(clipTestArchive())
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(body)
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExtensionValidRewrite(t *testing.T) {
	// The helper itself yields a file that opens: the cases below fail
	// because of their one defect only.
	b := clipWithExtension(t, clipExtBody(t, nil), nil)
	_, a, err := clipOpenBytes(t, b)
	if err != nil || a.Extension != ExtensionVersion {
		t.Fatalf("err %v", err)
	}
	if got := clipNodeByPath(a, "/etc/passwd").Xattrs["security.capability"]; got != "\x01\x00\x00\x02\x00\xff\x00" {
		t.Errorf("binary xattr = %q", got)
	}
}

func TestExtensionBad(t *testing.T) {
	body := clipExtBody(t, nil)
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"checksum", clipWithExtension(t, body, func(tr *extTrailer) { tr.Sum[0] ^= 1 }), "extension checksum mismatch"},
		{"offset into clip sections", clipWithExtension(t, body, func(tr *extTrailer) { tr.Offset -= 10 }), "overlaps clip sections"},
		{"offset past trailer", clipWithExtension(t, body, func(tr *extTrailer) { tr.Offset += 10 }), "runs past its trailer"},
		{"huge offset", clipWithExtension(t, body, func(tr *extTrailer) { tr.Offset = 1<<64 - 1 }), "runs past its trailer"},
		{"huge length", clipWithExtension(t, body, func(tr *extTrailer) { tr.Length = 1 << 62 }), "extension length 4611686018427387904 exceeds file size"},
		{"version 0", clipWithExtension(t, body, func(tr *extTrailer) { tr.Version = 0 }), "unsupported clipd extension version 0"},
		{"future version", clipWithExtension(t, body, func(tr *extTrailer) { tr.Version = 99 }), "unsupported clipd extension version 99"},
		{"json", clipWithExtension(t, []byte(`{"version": 1, "layers": [`), nil), "decode extension body"},
		{"json type", clipWithExtension(t, []byte(`{"version": 1, "xattrs": {"/": {"user.x": "not base64!"}}}`), nil), "decode extension body"},
		{"body version", clipWithExtension(t, clipExtBody(t, func(b *extBody) { b.Version = 7 }), nil), "body version 7 does not match trailer version 2"},
		{"layer count", clipWithExtension(t, clipExtBody(t, func(b *extBody) { b.Layers = b.Layers[:1] }), nil), "extension records 1 layers, index has 2"},
		{"layer digest", clipWithExtension(t, clipExtBody(t, func(b *extBody) { b.Layers[1].Digest = "sha256:bad" }), nil), "extension layer 1 is sha256:bad"},
		{"xattr path", clipWithExtension(t, clipExtBody(t, func(b *extBody) { b.Xattrs["/nope"] = map[string][]byte{"user.a": {1}} }), nil), `xattrs for "/nope"`},
		{"json length", clipWithExtension(t, body, func(tr *extTrailer) { tr.JSONLen = uint32(tr.Length + 1) }), "JSON length"},
		{"zran range", clipWithExtension(t, clipExtBody(t, func(b *extBody) { b.Layers[0].Zran = &extRange{Offset: 0, Length: 100} }), nil), "decompression index: range 0+100 outside a section of 0 bytes"},
		{"zran negative", clipWithExtension(t, clipExtBody(t, func(b *extBody) { b.Layers[0].Zran = &extRange{Offset: -5, Length: 0} }), nil), "outside a section"},
	}
	for _, c := range cases {
		clipExpectError(t, c.name, c.file, c.want)
	}
}

func TestExtensionIgnoresUnknownFields(t *testing.T) {
	// A later version may add fields; these fields still read.
	body := clipExtBody(t, nil)
	body = append(body[:len(body)-1], []byte(`, "future": {"x": 1}}`)...)
	_, a, err := clipOpenBytes(t, clipWithExtension(t, body, nil))
	if err != nil {
		t.Fatal(err)
	}
	if a.Layers[0].DiffID == "" {
		t.Errorf("layer 0 lost its diff_id: %+v", a.Layers[0])
	}
}

func TestExtensionTrailerLayout(t *testing.T) {
	_, b := clipWriteTestFile(t, clipTestArchive())
	tr := b[len(b)-extTrailerSize:]
	jsonLen := binary.LittleEndian.Uint32(tr[12:])
	if string(tr[:8]) != "CLIPDEXT" || binary.LittleEndian.Uint32(tr[8:]) != ExtensionVersion {
		t.Fatalf("trailer % x", tr[:16])
	}
	off, n := binary.LittleEndian.Uint64(tr[16:]), binary.LittleEndian.Uint64(tr[24:])
	body := b[off : off+n]
	if uint64(jsonLen) > n {
		t.Fatalf("JSON length %d > body %d", jsonLen, n)
	}
	if off+n != uint64(len(b)-extTrailerSize) {
		t.Errorf("body at %d+%d, trailer at %d", off, n, len(b)-extTrailerSize)
	}
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], tr[32:]) {
		t.Errorf("checksum")
	}
	var doc map[string]any
	if err := json.Unmarshal(body[:jsonLen], &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "source", "image", "layers", "xattrs"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("body has no %q: %s", k, body)
		}
	}
	if !strings.Contains(string(body), `"diff_id"`) || !strings.Contains(string(body), `"media_type"`) {
		t.Errorf("layer fields missing: %s", body)
	}
}
