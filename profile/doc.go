// Package profile owns prefetch profiles: per image, the spans of each
// layer that containers touched at their first starts, in the order they
// first touched them. A serving process records a mount's first seconds
// (Recording), the Store merges recordings into one Profile per image in
// daemon.state_dir/profiles, and a later cold mount of the image replays
// the profile's Plan: it fetches those spans in parallel before the
// workload asks for them.
//
// A profile names spans by layer digest and span index of the layer's
// decompression index, and records the geometry (span size, span count) it
// was recorded against: Verify refuses a profile made for another image or
// another index of it, so a replay never fetches spans the mount does not
// use. A profile only says which spans to fetch early; the bytes are
// verified by the fetcher like any other, so a forged profile can waste
// bandwidth (bounded by the cache budget) but never change what is read.
package profile
