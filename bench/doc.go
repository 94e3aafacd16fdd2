// Package bench holds the pieces of the cold-start benchmark that are worth
// unit tests: the network shaper put in front of the registry, the results
// file and its markdown report. The harness that drives the contenders lives
// in bench/cmd/clipbench; `make bench` runs it. Nothing in the daemon imports
// this package.
package bench
