package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/clipd/clipd/bench"
	"github.com/clipd/clipd/profile"
)

// The [prefetch] sections of the profile runs (issue #11: record for
// record_seconds from the mount, merge into state_dir/profiles at the end
// of the window or at unmount; replay a profile found at mount).
const (
	// recordConfig: the window outlasts any workload, so the recording
	// ends at the unmount that follows the workload: the profile holds
	// exactly what the workload's start touched.
	recordConfig = "\n[prefetch]\nrecord_seconds = \"10m\"\n"
	// replayConfig: replay on (the default, said out loud); recording as
	// by default, into a state directory thrown away after the run.
	replayConfig = "\n[prefetch]\nreplay = true\n"
)

// settleQuiet and settleMax bound the wait, after a profiled run's clock
// stopped, for prefetch requests still in flight: bytes moved and the
// prefetch figures are read once the registry saw nothing for settleQuiet.
const (
	settleQuiet = 500 * time.Millisecond
	settleMax   = 20 * time.Second
)

// clipdProfiled measures clipd-profiled on workload w: a profile recorded
// by an untimed start of w, then a cold start (empty cache) that has it.
func (h *harness) clipdProfiled(ctx context.Context, p bench.Profile, w string) error {
	snap, spans, err := h.recordProfile(ctx, p, w)
	if err != nil {
		return fmt.Errorf("record the profile: %w", err)
	}
	defer os.RemoveAll(snap)
	return h.profiledRun(ctx, p, w, w, snap, spans, bench.ClipdProfiled)
}

// recordProfile runs workload w once, untimed, on a daemon with a fresh
// state directory and cache whose recording window ends at the unmount,
// and returns a copy of the profiles it left in state_dir/profiles and the
// spans they hold (0 when the workload touched none: no profile).
func (h *harness) recordProfile(ctx context.Context, p bench.Profile, w string) (string, int, error) {
	dir, err := h.fresh("record")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(dir)
	d, err := startDaemon(ctx, h.clipdBin, dir, recordConfig)
	if err != nil {
		return "", 0, err
	}
	defer d.stop()
	m, err := d.mount(ctx, h.archive, "record", false, w == "runc")
	if err != nil {
		return "", 0, err
	}
	_, cleanup, err := h.ws.runBundle(ctx, w, m.Mountpoint, m.Bundle)
	cleanup()
	if err != nil {
		_ = d.unmount(ctx, m.ID)
		return "", 0, fmt.Errorf("%w (clipd log: %s)", err, d.logTail())
	}
	if err := d.unmount(ctx, m.ID); err != nil {
		return "", 0, err
	}
	src := filepath.Join(d.stateDir(), profile.Dir)
	spans, err := waitProfile(ctx, src, 5*time.Second)
	if err != nil {
		return "", 0, fmt.Errorf("%w (clipd log: %s)", err, d.logTail())
	}
	snap, err := h.fresh("profiles")
	if err != nil {
		return "", 0, err
	}
	if err := copyProfiles(src, snap); err != nil {
		os.RemoveAll(snap)
		return "", 0, err
	}
	h.log.Info("profile recorded", "profile", p.Name, "workload", w, "spans", spans)
	return snap, spans, nil
}

// waitProfile waits for the profile the unmount writes (the serving
// process may merge it as it exits, after the unmount answered) and
// returns its spans. No profile after the wait is no error: a workload
// that touched no span (ls-lR reads metadata only) records nothing.
func waitProfile(ctx context.Context, dir string, wait time.Duration) (int, error) {
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(dir); err == nil {
			st, err := profile.Open(dir)
			if err != nil {
				return 0, err
			}
			sums, err := st.List()
			if err != nil {
				return 0, fmt.Errorf("list profiles in %s: %w", dir, err)
			}
			spans := 0
			for _, s := range sums {
				if s.Err != "" {
					return 0, fmt.Errorf("profile %s in %s is unusable: %s", s.Image, dir, s.Err)
				}
				spans += s.Spans
			}
			if len(sums) > 0 {
				return spans, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// copyProfiles copies the profile files (*.json, not the store's lock) of
// src into dst.
func copyProfiles(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read profiles %s: %w", src, err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// profiledRun is one timed cold start of workload w with the profiles in
// snap (recorded on workload from): a fresh daemon whose state directory
// holds only those profiles, and an empty cache. It records the run under
// contender, with the mount's prefetch figures.
func (h *harness) profiledRun(ctx context.Context, p bench.Profile, from, w, snap string, spans int, contender string) error {
	dir, err := h.fresh("profiled")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// dir is new: the cache is empty, the state directory holds only the
	// profiles copied here.
	profiles := filepath.Join(dir, "state", profile.Dir)
	if err := os.MkdirAll(profiles, 0o755); err != nil {
		return err
	}
	if err := copyProfiles(snap, profiles); err != nil {
		return err
	}
	d, err := startDaemon(ctx, h.clipdBin, dir, replayConfig)
	if err != nil {
		return err
	}
	defer d.stop()
	h.shaper.Reset()
	cpu0 := procCPU(d.cmd.Process.Pid)
	start := time.Now()
	m, err := d.mount(ctx, h.archive, "profiled", false, w == "runc")
	if err != nil {
		return err
	}
	read, took, cpu, err := h.timeWorkload(ctx, d, m, w, start, cpu0)
	if err != nil {
		return err
	}
	// The clock has stopped; prefetch requests may still be in flight.
	// Their bytes belong to this run: wait for the registry to go quiet.
	h.settle(ctx)
	st, err := d.get(ctx, m.ID)
	if err != nil {
		_ = d.unmount(ctx, m.ID)
		return err
	}
	pf := st.prefetch(true)
	// A replay starts at the workload's first read of a span of the
	// profile (fetcher.Replayer): a foreign workload may never start it.
	if spans > 0 && pf.Planned == 0 && from == w {
		_ = d.unmount(ctx, m.ID)
		return fmt.Errorf("the mount planned no prefetch although its state directory held a profile of %d spans (clipd log: %s)", spans, d.logTail())
	}
	h.record(p, contender, w, took, read, cpu)
	run := &h.runs[len(h.runs)-1]
	run.Prefetch, run.ProfileFrom, run.ProfileSpans = pf, from, spans
	h.log.Info("prefetch", "contender", contender, "workload", w, "from", from, "profile_spans", spans,
		"planned", pf.Planned, "fetched", pf.Fetched, "used", pf.Used, "wasted", pf.Wasted)
	return d.unmount(ctx, m.ID)
}

// settle waits until the shaper saw no new bytes or requests for
// settleQuiet, or settleMax passed.
func (h *harness) settle(ctx context.Context) {
	last, quiet := h.shaper.Counts(), time.Now()
	deadline := time.Now().Add(settleMax)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		c := h.shaper.Counts()
		if c.Bytes != last.Bytes || c.Requests != last.Requests {
			last, quiet = c, time.Now()
			continue
		}
		if time.Since(quiet) >= settleQuiet {
			return
		}
	}
	h.log.Warn("registry traffic did not settle after the workload", "after", settleMax)
}

// crossWorkload measures a profile recorded on from, replayed by cold
// starts of each workload of to (clipd-profiled-cross), and clipd-cold
// of those workloads when the main runs did not measure it on p.
func (h *harness) crossWorkload(ctx context.Context, p bench.Profile, from string, to []string, rounds int) {
	for r := range rounds {
		snap, spans, err := h.recordProfile(ctx, p, from)
		if err != nil {
			h.fail(p, bench.ClipdProfiledCross, from, fmt.Errorf("record the profile: %w", err))
			continue
		}
		for k := range to {
			w := to[(r+k)%len(to)]
			cold := func() {
				if len(bench.Results{Runs: h.runs}.Select(p.Name, bench.ClipdCold, w)) < rounds {
					if err := h.clipdArchive(ctx, p, w, h.archive, false, bench.ClipdCold); err != nil {
						h.fail(p, bench.ClipdCold, w, err)
					}
				}
			}
			prof := func() {
				if err := h.profiledRun(ctx, p, from, w, snap, spans, bench.ClipdProfiledCross); err != nil {
					h.fail(p, bench.ClipdProfiledCross, w, err)
				}
			}
			// Alternate which goes first, as the main runs do.
			if r%2 == 0 {
				cold()
				prof()
			} else {
				prof()
				cold()
			}
		}
		os.RemoveAll(snap)
	}
}
