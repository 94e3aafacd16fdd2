package index

import (
	"errors"
	"io"
	"math"

	"github.com/beam-cloud/clip/pkg/common"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Decoding clip's node list is most of what a mount does before it is
// live (README, "Fast mounts"): encoding/gob decodes it by reflection, one
// allocation per node, per RemoteRef and per string, layer digests and node
// types included. clipFastDecodeIndex reads the same bytes directly for the
// shapes of ClipNode that clip and clipd write, into one array of nodes,
// with node types and layer digests shared. It understands gob's wire
// format only as far as these types need; whatever else it meets (another
// field, another type, anything malformed) makes it give up with
// errGobFallback, and encoding/gob decodes the section instead, so the
// result, and every error, is gob's.

var errGobFallback = errors.New("not a node list the fast decoder knows")

// Predefined gob type ids (encoding/gob/type.go).
const (
	gobBool   = 1
	gobInt    = 2
	gobUintID = 3
	gobString = 6
)

// gobWireType is what a type definition message says, as far as the fast
// decoder cares: a struct's fields, or a slice's element type.
type gobWireType struct {
	name   string
	fields []gobWireField // a struct
	elem   int64          // a slice; 0 otherwise
}

type gobWireField struct {
	name string
	id   int64
}

// gobReader reads gob's integer and string encodings from a buffer; any
// read past the end sets bad.
type gobReader struct {
	b   []byte
	bad bool
	// src, when set, holds the rest of the message, not yet read: the
	// node list is decoded through a window rather than from a copy of
	// the whole section (see clipNodes).
	src *gobStream
}

// gobStream is the part of a message still in the file.
type gobStream struct {
	r        io.ReaderAt
	pos, end int64  // next byte to read; end of the message
	buf      []byte // the window
}

// Window sizes of a streamed node list: refilled whenever less than
// gobRefillAt bytes are left, so that any node up to that size decodes
// from the window. A larger one (clip and clipd write none: a path is at
// most MaxPathLen) runs off the window's end, and the fast decoder gives up
// as it does for anything else it cannot read.
const (
	gobWindow   = 1 << 20
	gobRefillAt = 64 << 10
)

// refill tops the window up from the file when it runs low. A read error
// makes the reader bad: encoding/gob then reads the section again and
// reports it.
func (r *gobReader) refill() {
	s := r.src
	if s == nil || s.pos == s.end || len(r.b) >= gobRefillAt || r.bad {
		return
	}
	n := copy(s.buf, r.b)
	want := int(min(int64(len(s.buf)-n), s.end-s.pos))
	if got, _ := s.r.ReadAt(s.buf[n:n+want], s.pos); got < want {
		r.bad, r.b = true, nil
		return
	}
	s.pos += int64(want)
	r.b = s.buf[:n+want]
}

// done reports whether the whole message was read.
func (r *gobReader) done() bool {
	return !r.bad && len(r.b) == 0 && (r.src == nil || r.src.pos == r.src.end)
}

func (r *gobReader) uint() uint64 {
	v, rest, ok := gobUint(r.b)
	if !ok {
		r.bad = true
		r.b = nil
		return 0
	}
	r.b = rest
	return v
}

func (r *gobReader) int() int64 {
	u := r.uint()
	if u&1 != 0 {
		return ^int64(u >> 1)
	}
	return int64(u >> 1)
}

func (r *gobReader) bytes() []byte {
	n := r.uint()
	if r.bad || n > uint64(len(r.b)) {
		r.bad = true
		r.b = nil
		return nil
	}
	s := r.b[:n:n]
	r.b = r.b[n:]
	return s
}

// clipFastDecodeIndex decodes the gob stream b (a whole index section) as
// encoding/gob would decode it into []*common.ClipNode, or returns
// errGobFallback.
func clipFastDecodeIndex(b []byte) ([]*common.ClipNode, error) {
	d, msg, count, missing, err := clipFastPrepare(b)
	if err != nil {
		return nil, err
	}
	if missing != 0 {
		return nil, errGobFallback
	}
	nodes := make([]common.ClipNode, count)
	out := make([]*common.ClipNode, 0, count)
	err = d.each(msg, count, func(cn *common.ClipNode) error {
		nodes[len(out)] = *cn
		if cn.Remote != nil {
			rr := *cn.Remote
			nodes[len(out)].Remote = &rr
		}
		out = append(out, &nodes[len(out)])
		return nil
	})
	return out, err
}

// clipFastPrepare reads the type definitions of b and returns a decoder
// for its node list, the value message positioned at the first node, the
// node count, and how many bytes of the value message lie beyond b (b may
// be the start of a section: the type definitions must be in it, the node
// list need not be); errGobFallback when the stream is not one it knows.
func clipFastPrepare(b []byte) (*clipNodeDecoder, *gobReader, int, int64, error) {
	types := map[int64]*gobWireType{}
	for len(b) > 0 {
		n, rest, ok := gobUint(b)
		if !ok || n == 0 {
			return nil, nil, 0, 0, errGobFallback
		}
		missing := int64(0)
		if n > uint64(len(rest)) {
			if n > MaxIndexBytes {
				return nil, nil, 0, 0, errGobFallback
			}
			missing = int64(n) - int64(len(rest))
			n = uint64(len(rest))
		}
		msg := &gobReader{b: rest[:n]}
		b = rest[n:]
		id := msg.int()
		if msg.bad {
			return nil, nil, 0, 0, errGobFallback
		}
		if id < 0 {
			if missing != 0 {
				return nil, nil, 0, 0, errGobFallback
			}
			wt, ok := gobReadWireType(msg)
			if !ok || types[-id] != nil {
				return nil, nil, 0, 0, errGobFallback
			}
			types[-id] = wt
			continue
		}
		// The value: the slice, sent as a singleton (field delta 0).
		st := types[id]
		if st == nil || st.elem == 0 || msg.uint() != 0 || msg.bad {
			return nil, nil, 0, 0, errGobFallback
		}
		d, ok := newClipNodeDecoder(types, st.elem)
		if !ok {
			return nil, nil, 0, 0, errGobFallback
		}
		count := msg.uint()
		if msg.bad || count > uint64(len(msg.b))+uint64(missing) || count > MaxNodes {
			return nil, nil, 0, 0, errGobFallback
		}
		return d, msg, int(count), missing, nil
	}
	return nil, nil, 0, 0, errGobFallback
}

// gobReadWireType reads a wireType value: exactly one of its fields set,
// SliceT (2) or StructT (3); any other kind is not one of ours.
func gobReadWireType(r *gobReader) (*gobWireType, bool) {
	field := r.uint()
	var wt *gobWireType
	switch field {
	case 2: // SliceT: {CommonType, Elem}
		wt = &gobWireType{}
		var ok bool
		if wt.name, ok = gobReadCommonType(r); !ok {
			return nil, false
		}
		for {
			switch r.uint() {
			case 0:
				if wt.elem <= 0 {
					return nil, false
				}
				goto end
			case 1: // Elem
				wt.elem = r.int()
			default:
				return nil, false
			}
			if r.bad {
				return nil, false
			}
		}
	case 3: // StructT: {CommonType, Field []*fieldType}
		wt = &gobWireType{}
		var ok bool
		if wt.name, ok = gobReadCommonType(r); !ok {
			return nil, false
		}
		for {
			switch r.uint() {
			case 0:
				goto end
			case 1: // Field
				count := r.uint()
				if r.bad || count > uint64(len(r.b)) {
					return nil, false
				}
				for range count {
					var f gobWireField
					for delta, fn := r.uint(), uint64(0); delta != 0 && !r.bad; delta = r.uint() {
						switch fn += delta; fn {
						case 1:
							f.name = string(r.bytes())
						case 2:
							f.id = r.int()
						default:
							return nil, false
						}
					}
					wt.fields = append(wt.fields, f)
				}
			default:
				return nil, false
			}
			if r.bad {
				return nil, false
			}
		}
	default:
		return nil, false
	}
end:
	// Nothing may follow the wireType's one field.
	if r.uint() != 0 || r.bad || len(r.b) != 0 {
		return nil, false
	}
	return wt, true
}

// gobReadCommonType reads the first field of a sliceType or structType
// (delta 1: CommonType{Name, Id}) and returns its name.
func gobReadCommonType(r *gobReader) (string, bool) {
	if r.uint() != 1 {
		return "", false
	}
	var name string
	for delta, fn := r.uint(), uint64(0); delta != 0 && !r.bad; delta = r.uint() {
		switch fn += delta; fn {
		case 1:
			name = string(r.bytes())
		case 2:
			r.int()
		default:
			return "", false
		}
	}
	return name, !r.bad
}

// The fields of ClipNode, RemoteRef, fuse.Attr and fuse.Owner the fast
// decoder fills, by gob field name and wire type.
type clipField int

const (
	cfSkip clipField = iota
	cfNodeType
	cfPath
	cfTarget
	cfContentHash
	cfDataPos
	cfDataLen
	cfAttr
	cfRemote
	// RemoteRef
	cfLayerDigest
	cfUOffset
	cfULength
	// fuse.Attr
	cfIno
	cfSize
	cfBlocks
	cfAtime
	cfMtime
	cfCtime
	cfAtimensec
	cfMtimensec
	cfCtimensec
	cfMode
	cfNlink
	cfOwner
	cfRdev
	cfBlksize
	cfFlags
	// fuse.Owner
	cfUid
	cfGid
)

type clipFieldSpec struct {
	f   clipField
	typ int64 // gob type id; 0: a struct, decoded by its own table
}

var (
	clipNodeFields = map[string]clipFieldSpec{
		"NodeType": {cfNodeType, gobString}, "Path": {cfPath, gobString}, "Attr": {cfAttr, 0},
		"Target": {cfTarget, gobString}, "ContentHash": {cfContentHash, gobString},
		"DataPos": {cfDataPos, gobInt}, "DataLen": {cfDataLen, gobInt}, "Remote": {cfRemote, 0},
	}
	clipRemoteFields = map[string]clipFieldSpec{
		"LayerDigest": {cfLayerDigest, gobString}, "UOffset": {cfUOffset, gobInt}, "ULength": {cfULength, gobInt},
	}
	clipAttrFields = map[string]clipFieldSpec{
		"Ino": {cfIno, gobUintID}, "Size": {cfSize, gobUintID}, "Blocks": {cfBlocks, gobUintID},
		"Atime": {cfAtime, gobUintID}, "Mtime": {cfMtime, gobUintID}, "Ctime": {cfCtime, gobUintID},
		"Atimensec": {cfAtimensec, gobUintID}, "Mtimensec": {cfMtimensec, gobUintID}, "Ctimensec": {cfCtimensec, gobUintID},
		"Mode": {cfMode, gobUintID}, "Nlink": {cfNlink, gobUintID}, "Owner": {cfOwner, 0},
		"Rdev": {cfRdev, gobUintID}, "Blksize": {cfBlksize, gobUintID}, "Flags": {cfFlags, gobUintID},
	}
	clipOwnerFields = map[string]clipFieldSpec{"Uid": {cfUid, gobUintID}, "Gid": {cfGid, gobUintID}}
)

// clipNodeDecoder holds, per struct, the action of each wire field number.
type clipNodeDecoder struct {
	node, remote, attr, owner []clipField // index: wire field number - 1

	// Shared strings: every node of a type, every file of a layer.
	nodeTypes []string
	digests   []string
}

// newClipNodeDecoder maps the wire types the stream defined onto the
// fields it knows; any field it does not know, or of another type, and it
// declines.
func newClipNodeDecoder(types map[int64]*gobWireType, nodeID int64) (*clipNodeDecoder, bool) {
	d := &clipNodeDecoder{}
	var table func(id int64, known map[string]clipFieldSpec, sub map[clipField]*[]clipField, subKnown map[clipField]map[string]clipFieldSpec) ([]clipField, bool)
	table = func(id int64, known map[string]clipFieldSpec, sub map[clipField]*[]clipField, subKnown map[clipField]map[string]clipFieldSpec) ([]clipField, bool) {
		wt := types[id]
		if wt == nil || wt.elem != 0 {
			return nil, false
		}
		out := make([]clipField, len(wt.fields))
		for i, f := range wt.fields {
			spec, ok := known[f.name]
			if !ok {
				// gob skips a field the target does not have (clip
				// built with another go-fuse, e.g. Attr.Padding).
				switch f.id {
				case gobBool, gobInt, gobUintID, gobString:
					out[i] = -clipField(f.id)
					continue
				}
				return nil, false
			}
			if spec.typ == 0 {
				dst := sub[spec.f]
				if dst == nil || *dst != nil { // unknown or defined twice
					return nil, false
				}
				t, ok := table(f.id, subKnown[spec.f], sub, subKnown)
				if !ok {
					return nil, false
				}
				*dst = t
			} else if f.id != spec.typ {
				return nil, false
			}
			out[i] = spec.f
		}
		return out, true
	}
	sub := map[clipField]*[]clipField{cfAttr: &d.attr, cfRemote: &d.remote, cfOwner: &d.owner}
	subKnown := map[clipField]map[string]clipFieldSpec{cfAttr: clipAttrFields, cfRemote: clipRemoteFields, cfOwner: clipOwnerFields}
	t, ok := table(nodeID, clipNodeFields, sub, subKnown)
	if !ok {
		return nil, false
	}
	d.node = t
	return d, true
}

// each decodes count ClipNodes from r into one scratch node, calling fn
// with each, and checks that the message ends with them. Any error of fn
// ends the walk and is returned; a stream it cannot read is errGobFallback.
func (d *clipNodeDecoder) each(r *gobReader, count int, fn func(*common.ClipNode) error) error {
	var cn common.ClipNode
	var rr common.RemoteRef
	for range count {
		r.refill()
		cn, rr = common.ClipNode{}, common.RemoteRef{}
		if !d.struct_(r, d.node, func(f clipField, r *gobReader) bool {
			switch f {
			case cfNodeType:
				cn.NodeType = common.ClipNodeType(d.shared(&d.nodeTypes, r.bytes()))
			case cfPath:
				cn.Path = string(r.bytes())
			case cfTarget:
				cn.Target = string(r.bytes())
			case cfContentHash:
				cn.ContentHash = string(r.bytes())
			case cfDataPos:
				cn.DataPos = r.int()
			case cfDataLen:
				cn.DataLen = r.int()
			case cfAttr:
				return d.struct_(r, d.attr, func(f clipField, r *gobReader) bool { return d.attrField(&cn.Attr, f, r) })
			case cfRemote:
				cn.Remote = &rr
				return d.struct_(r, d.remote, func(f clipField, r *gobReader) bool {
					switch f {
					case cfLayerDigest:
						rr.LayerDigest = d.shared(&d.digests, r.bytes())
					case cfUOffset:
						rr.UOffset = r.int()
					case cfULength:
						rr.ULength = r.int()
					default:
						return false
					}
					return true
				})
			default:
				return false
			}
			return true
		}) {
			return errGobFallback
		}
		if err := fn(&cn); err != nil {
			return err
		}
	}
	// gob refuses a message with bytes after its value.
	r.refill()
	if !r.done() {
		return errGobFallback
	}
	return nil
}

// struct_ walks one struct's field deltas, handing each known field to set.
func (d *clipNodeDecoder) struct_(r *gobReader, fields []clipField, set func(clipField, *gobReader) bool) bool {
	fn := uint64(0)
	for {
		delta := r.uint()
		if r.bad {
			return false
		}
		if delta == 0 {
			return true
		}
		if delta > uint64(len(fields)) || fn+delta > uint64(len(fields)) {
			return false
		}
		fn += delta
		f := fields[fn-1]
		if f < 0 { // skipped: a basic value of wire type -f
			if clipField(-f) == gobString {
				r.bytes()
			} else {
				r.uint()
			}
			if r.bad {
				return false
			}
			continue
		}
		if !set(f, r) || r.bad {
			return false
		}
	}
}

// attrField sets one field of a fuse.Attr; a value too large for a 32-bit
// field is gob's error to report.
func (d *clipNodeDecoder) attrField(a *fuse.Attr, f clipField, r *gobReader) bool {
	if f == cfOwner {
		return d.struct_(r, d.owner, func(f clipField, r *gobReader) bool {
			v := r.uint()
			if v > math.MaxUint32 {
				return false
			}
			switch f {
			case cfUid:
				a.Uid = uint32(v)
			case cfGid:
				a.Gid = uint32(v)
			default:
				return false
			}
			return true
		})
	}
	v := r.uint()
	var p32 *uint32
	switch f {
	case cfIno:
		a.Ino = v
	case cfSize:
		a.Size = v
	case cfBlocks:
		a.Blocks = v
	case cfAtime:
		a.Atime = v
	case cfMtime:
		a.Mtime = v
	case cfCtime:
		a.Ctime = v
	case cfAtimensec:
		p32 = &a.Atimensec
	case cfMtimensec:
		p32 = &a.Mtimensec
	case cfCtimensec:
		p32 = &a.Ctimensec
	case cfMode:
		p32 = &a.Mode
	case cfNlink:
		p32 = &a.Nlink
	case cfRdev:
		p32 = &a.Rdev
	case cfBlksize:
		p32 = &a.Blksize
	case cfFlags:
		p32 = &a.Flags
	default:
		return false
	}
	if p32 != nil {
		if v > math.MaxUint32 {
			return false
		}
		*p32 = uint32(v)
	}
	return true
}

// shared returns b as a string, the same string for the same bytes (the
// few node types, the few layer digests).
func (d *clipNodeDecoder) shared(seen *[]string, b []byte) string {
	for i, s := range *seen {
		if s == string(b) {
			if i > 0 { // the next node most likely has the same
				(*seen)[0], (*seen)[i] = s, (*seen)[0]
			}
			return s
		}
	}
	s := string(b)
	if len(*seen) < 256 {
		*seen = append(*seen, s)
	}
	return s
}
