package mounter

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/clipd/clipd/daemon"
	"golang.org/x/sys/unix"
)

// Limits bound one serving process: a hostile or corrupt image must not
// take the host's memory, and the OOM killer must be free to pick a
// runaway serving process instead of the workloads (the daemon itself runs
// with OOMScoreAdjust=-500, which its children would otherwise inherit).
type Limits struct {
	// OOMScoreAdj is written to /proc/PID/oom_score_adj.
	OOMScoreAdj int
	// Memory is the RLIMIT_DATA of the process (hard: allocations beyond
	// it fail and the Go runtime aborts, failing this mount only), and
	// 3/4 of it its Go soft limit (GOMEMLIMIT). 0: no limit.
	Memory int64
}

// LimitsOf reads the serving process limits of cfg.
func LimitsOf(cfg daemon.Config) Limits {
	return Limits{OOMScoreAdj: cfg.Daemon.ServeOOMScoreAdj, Memory: int64(cfg.Daemon.ServeMemoryLimit)}
}

// softLimit is the GOMEMLIMIT of a process with hard limit memory: below
// it, so that the collector works harder before the hard limit is hit.
func (l Limits) softLimit() int64 { return l.Memory / 4 * 3 }

// env returns base (nil: this process's environment) with the Go soft
// limit set; GOMEMLIMIT is read by the runtime before main runs, which is
// what debug.SetMemoryLimit would do, only earlier.
func (l Limits) env(base []string) []string {
	if base == nil {
		base = os.Environ()
	}
	env := slices.DeleteFunc(slices.Clone(base), func(kv string) bool {
		return strings.HasPrefix(kv, "GOMEMLIMIT=")
	})
	if l.Memory > 0 {
		env = append(env, "GOMEMLIMIT="+strconv.FormatInt(l.softLimit(), 10))
	}
	return env
}

// apply sets the limits on the freshly started process pid. The process is
// still in the Go runtime's start-up when this runs; its address space is
// small, so the data limit is below nothing it already holds.
func (l Limits) apply(pid int) error {
	if l.Memory > 0 {
		lim := &unix.Rlimit{Cur: uint64(l.Memory), Max: uint64(l.Memory)}
		if err := unix.Prlimit(pid, unix.RLIMIT_DATA, lim, nil); err != nil {
			return fmt.Errorf("set RLIMIT_DATA of serving process pid %d to %d bytes: %w", pid, l.Memory, err)
		}
	}
	p := fmt.Sprintf("/proc/%d/oom_score_adj", pid)
	if err := os.WriteFile(p, []byte(strconv.Itoa(l.OOMScoreAdj)), 0); err != nil {
		// EACCES: below the daemon's own score without CAP_SYS_RESOURCE.
		return fmt.Errorf("set oom_score_adj of serving process pid %d to %d: %w", pid, l.OOMScoreAdj, err)
	}
	return nil
}

// reloadLimits takes the limits of cfg for new mounts and names the keys
// that changed.
func reloadLimits(sc *SpawnConfig, cfg daemon.Config) (applied []string) {
	next := LimitsOf(cfg)
	if next.OOMScoreAdj != sc.Limits.OOMScoreAdj {
		applied = append(applied, "daemon.serve_oom_score_adj (new mounts)")
	}
	if next.Memory != sc.Limits.Memory {
		applied = append(applied, "daemon.serve_memory_limit (new mounts)")
	}
	sc.Limits = next
	return applied
}
