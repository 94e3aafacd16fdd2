// Package e2e holds clipd's end-to-end tests and the tree comparator they use
// as an oracle check.
//
// The tests (go test ./e2e/, as root) build cmd/clipd once, start a real
// docker-registry on 127.0.0.1, push images with skopeo or
// go-containerregistry, run `clipd serve` with a temporary config, index and
// mount through the CLI and the Unix socket API, and compare every mount with
// `umoci unpack` of the same image using CompareTrees/Compare: type, all
// twelve mode bits, owner, size, mtime to the nanosecond, symlink target,
// content digest, device numbers, xattrs and hard-link groups. Any difference
// not covered by a documented Ignore fails the test. Missing tools fail the
// tests; they never skip.
//
// The comparator lives in a non-test file so that benchmarks can reuse it.
package e2e
