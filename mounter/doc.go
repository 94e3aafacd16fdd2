// Package mounter is the data plane. Mounter is the in-process library that
// knows index, fetcher, cache and mount together; ServeMount runs it inside
// a serving process (clipd serve-mount), one per mount, which answers the
// daemon on a control socket (control_server.go) and records and replays
// the image's prefetch profile (profiles.go, package profile). Spawner
// implements the daemon's daemon.Mounter contract: it starts serving
// processes in their own session, so that they outlive the daemon, follows
// them, talks to them (control_client.go) and adopts them again after a
// daemon restart. It keeps one spare serving process started in advance
// (spare.go, spare_proto.go), which takes the next mount request over a
// socketpair instead of a fork/exec on the request's path, and opens the
// cache and warms its heap while it waits (warm.go). Both ends of the control protocol use package api's wire
// helpers; this package depends on the daemon's contract types, never on
// its server.
package mounter
