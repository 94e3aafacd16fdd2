package index

// Bounds on what parsing a .clip file may cost.
//
// A .clip file can come from anyone who can name it in a mount request, so
// Open treats it as hostile: every length it declares is checked against the
// limits below before anything is allocated, independently of the file's
// apparent size (a sparse file of a few bytes can claim terabytes, and its
// holes read as zeros). Memory then grows only with bytes actually read:
// sections are read through readers limited to the section, never into a
// buffer of the claimed length. The node list clipd's own decoder knows
// (format_gobfast.go) is read through a 1 MiB window as it is decoded;
// one left to encoding/gob is read whole, at once when the section is at
// most 32 MiB (exactReadBytes, after its first 64 KiB passed the node
// count check), because gob needs all of it anyway.
//
// The limits are generous for real images (the largest images seen have a
// few hundred thousand entries and an index of a few tens of MiB) and make
// the worst case bounded:
//
//   - index section (gob node list):  MaxIndexBytes, 256 MiB
//   - nodes in the index:             MaxNodes, 1 Mi (1,048,576)
//   - node path, symlink target:      MaxPathLen, 4096 bytes each (PATH_MAX)
//   - storage info section:           MaxStorageInfoBytes, 16 MiB
//   - extension body:                 MaxExtensionBytes, 512 MiB
//   - JSON part of the extension:     MaxExtensionJSONBytes, 64 MiB
//   - gob type definitions:           maxGobPrologue, 64 KiB (before the nodes)
//
// Worst case for a hostile index that passes every check: the index
// section (≤ 256 MiB), the strings decoded from it (≤ its size) and at most
// 1 Mi decoded nodes of roughly 350 bytes each in two representations
// (one when clipd's own decoder reads it): about 900 MiB at most, reached only by a file that
// really holds 256 MiB of index. The extension adds at most its body
// (≤ 512 MiB, read as it arrives) and what its JSON decodes to. A file whose
// declared sections lie in holes fails on the first bytes it reads: gob
// never sends an empty message and the extension's JSON starts with '{', so
// a run of zeros is rejected before more of it is read.
//
// Errors name the file and what is wrong with it, but never quote its bytes:
// a file that is not a .clip file gets "not a .clip file (bad magic)", so a
// caller allowed to name paths cannot use the parser to read them.
const (
	MaxIndexBytes         = 256 << 20
	MaxNodes              = 1 << 20
	MaxPathLen            = 4096
	MaxStorageInfoBytes   = 16 << 20
	MaxExtensionBytes     = 512 << 20
	MaxExtensionJSONBytes = 64 << 20

	// maxGobPrologue bounds the gob type definitions sent before the node
	// list: they are checked in one peeked window (a few hundred bytes in
	// files clip and clipd write).
	maxGobPrologue = 64 << 10
)
