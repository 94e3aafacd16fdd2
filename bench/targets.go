package bench

import (
	"fmt"
	"strings"
)

// Target is one goal of the benchmark on region / python-import, with what
// this run measured.
type Target struct {
	Issue string  // where the target was set, e.g. "#11"
	What  string  // e.g. "clipd-profiled ÷ full-pull"
	Got   float64 // measured
	Max   float64 // target: Got ≤ Max
	Unit  string  // "×" (a ratio)
	// Measured is false when a run the target needs is missing (the
	// contender was left out or every run of it failed).
	Measured bool
}

// Met reports whether the target was measured and reached.
func (t Target) Met() bool { return t.Measured && t.Got <= t.Max }

// Verdict is "met", "**not met**" or "not measured".
func (t Target) Verdict() string {
	switch {
	case !t.Measured:
		return "not measured"
	case t.Met():
		return "met"
	}
	return "**not met**"
}

// TargetProfile and TargetWorkload are where the targets are judged.
const (
	TargetProfile  = "region"
	TargetWorkload = "python-import"
)

// Targets computes every target on region / python-import from r and the
// workload's local time (Meta.Local), newest issue first. A ratio whose
// runs are missing comes back with Measured false.
func Targets(r Results, m Meta) []Target {
	p, _ := ProfileByName(TargetProfile)
	w := TargetWorkload
	cold := Summarize(r.Select(p.Name, ClipdCold, w))
	prof := Summarize(r.Select(p.Name, ClipdProfiled, w))
	full := Summarize(r.Select(p.Name, FullPull, w))
	clip := Summarize(r.Select(p.Name, ClipV2, w))
	limit, haveLimit := PhysicalLimit(r, p, w, m.Local[w])
	haveLimit = haveLimit && limit.Seconds > 0 && full.N > 0 // Local comes from the full pulls
	image := float64(m.ImageBytes)

	ratio := func(issue, what string, a Medians, av float64, b Medians, bv float64, ok bool, target float64) Target {
		t := Target{Issue: issue, What: what, Max: target, Unit: "×"}
		if a.N > 0 && b.N > 0 && bv > 0 && ok {
			t.Got, t.Measured = av/bv, true
		}
		return t
	}
	imageM := Medians{N: 1}
	limitM := Medians{N: 1}
	return []Target{
		ratio("#11", "clipd-profiled ÷ full-pull", prof, prof.Seconds, full, full.Seconds, true, 0.20),
		ratio("#11", "clipd-profiled ÷ physical limit", prof, prof.Seconds, limitM, limit.Seconds, haveLimit, 1.3),
		ratio("#11", "clipd-cold ÷ full-pull", cold, cold.Seconds, full, full.Seconds, true, 0.28),
		ratio("#11", "clipd-cold bytes moved ÷ compressed image", cold, cold.BytesMoved, imageM, image, true, 0.20),
		ratio("#11", "clipd-profiled bytes moved ÷ compressed image", prof, prof.BytesMoved, imageM, image, true, 0.20),
		ratio("#5", "clipd-cold ÷ full-pull", cold, cold.Seconds, full, full.Seconds, true, 0.25),
		ratio("#5", "clipd-cold ÷ clip-v2", cold, cold.Seconds, clip, clip.Seconds, true, 0.5),
		ratio("#5", "clipd-cold ÷ physical limit", cold, cold.Seconds, limitM, limit.Seconds, haveLimit, 2),
	}
}

// CrossRow is a profile recorded on one workload (From) replayed by a cold
// start of another (Workload), against clipd-cold of that workload.
type CrossRow struct {
	Profile, From, Workload string
	N, ColdN                int
	Seconds, ColdSeconds    float64 // medians
	MaxSeconds              float64 // slowest clipd-profiled-cross run
	Moved, ColdMoved        float64 // median bytes moved
	Planned, WastedSpans    float64 // median prefetch figures (spans)
	PrefetchRuns            int     // runs that reported prefetch figures
}

// ExtraBytes is what the foreign profile made the cold start move beyond
// clipd-cold (median against median; negative when it moved less).
func (c CrossRow) ExtraBytes() float64 { return c.Moved - c.ColdMoved }

// Slower reports whether the median cold start with the foreign profile
// took longer than the median without a profile.
func (c CrossRow) Slower() bool { return c.N > 0 && c.ColdN > 0 && c.Seconds > c.ColdSeconds }

// CrossRows returns the rows of every workload with clipd-profiled-cross
// runs on profile, in workload order.
func CrossRows(r Results, profile string) []CrossRow {
	var out []CrossRow
	for _, w := range Workloads() {
		runs := r.Select(profile, ClipdProfiledCross, w)
		if len(runs) == 0 {
			continue
		}
		s := Summarize(runs)
		cold := Summarize(r.Select(profile, ClipdCold, w))
		out = append(out, CrossRow{Profile: profile, From: runs[0].ProfileFrom, Workload: w, N: s.N, ColdN: cold.N,
			Seconds: s.Seconds, ColdSeconds: cold.Seconds, MaxSeconds: s.MaxSeconds, Moved: s.BytesMoved,
			ColdMoved: cold.BytesMoved, Planned: s.Planned, WastedSpans: s.Wasted, PrefetchRuns: s.PrefetchRuns})
	}
	return out
}

// CrossVerdict is the report's line on whether a foreign profile ever
// made a cold start slower than no profile.
func CrossVerdict(rows []CrossRow) string {
	if len(rows) == 0 {
		return "no cross-workload runs in this run"
	}
	var slower []string
	measured := 0
	for _, c := range rows {
		if c.ColdN == 0 {
			continue
		}
		measured++
		if c.Slower() {
			slower = append(slower, fmt.Sprintf("%s (%.3f s against %.3f s, %.2f ×)", c.Workload, c.Seconds, c.ColdSeconds, c.Seconds/c.ColdSeconds))
		}
	}
	switch {
	case measured == 0:
		return "not measured: no clipd-cold runs of these workloads to compare with"
	case len(slower) == 0:
		return "**never slower** than clipd-cold (median against median, every workload)"
	}
	return fmt.Sprintf("**slower** than clipd-cold on %d of %d workloads: %s", len(slower), measured, strings.Join(slower, "; "))
}
