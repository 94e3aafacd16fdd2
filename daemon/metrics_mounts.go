package daemon

import (
	"bufio"
	"fmt"

	"github.com/clipd/clipd/api"
)

// writeMountStateMetrics adds the state of the data plane to /metrics: which
// mounts are up, which failed, and how many serving processes died.
func (s *Server) writeMountStateMetrics(b *bufio.Writer, all []*entry) {
	s.mu.Lock()
	failures := s.failures
	s.mu.Unlock()
	failed := 0
	fmt.Fprintf(b, "# HELP clipd_mount_up 1 when the mount is served, 0 when it failed.\n# TYPE clipd_mount_up gauge\n")
	for _, e := range all {
		up := 1
		if e.State == api.MountFailed {
			up, failed = 0, failed+1
		}
		fmt.Fprintf(b, "clipd_mount_up{id=\"%s\",mountpoint=\"%s\",version=\"%s\",pid=\"%d\"} %d\n",
			escapeLabel(e.ID), escapeLabel(e.Mountpoint), escapeLabel(e.Version), e.PID, up)
	}
	fmt.Fprintf(b, "# HELP clipd_mounts_failed Mounts whose serving process died (listed until deleted).\n# TYPE clipd_mounts_failed gauge\nclipd_mounts_failed %d\n", failed)
	fmt.Fprintf(b, "# HELP clipd_serving_process_failures_total Serving processes found dead by this daemon.\n# TYPE clipd_serving_process_failures_total counter\nclipd_serving_process_failures_total %d\n", failures)
}
