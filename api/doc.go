// Package api is the wire contract of clipd's Unix sockets: the types of the
// daemon's HTTP/JSON API (mount request and answer, per-mount figures,
// health), its error envelope {"error": {"code", "message"}} with the stable
// error codes, and the one set of JSON-over-Unix-socket helpers that every
// end uses: the client (UnixHTTPClient, Client) of the CLI, the tests and
// the daemon's calls to its serving processes, and the server helpers
// (WriteJSON, DecodeBody, WriteError) of the daemon's API and of a serving
// process's control socket. It imports no other clipd package, so that the
// CLI, the daemon and the serving processes share it without importing each
// other.
package api
