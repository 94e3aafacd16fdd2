package daemon

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"

	"github.com/clipd/clipd/api"
)

// metricsFamily is one per-mount counter of the exposition.
type metricsFamily struct {
	name, help string
	value      func(api.MountStats) int64
}

var mountFamilies = []metricsFamily{
	{"clipd_mount_bytes_fetched_total", "Bytes received from the registry for this mount.", func(s api.MountStats) int64 { return s.BytesFetched }},
	{"clipd_mount_requests_total", "Blob requests made for this mount.", func(s api.MountStats) int64 { return s.Requests }},
	{"clipd_mount_cache_hits_total", "Span reads served from the local cache.", func(s api.MountStats) int64 { return s.CacheHits }},
	{"clipd_mount_cache_misses_total", "Span reads that needed a fetch from the registry.", func(s api.MountStats) int64 { return s.CacheMisses }},
	{"clipd_mount_bytes_from_cache_total", "Bytes read from the local cache.", func(s api.MountStats) int64 { return s.BytesFromCache }},
	{"clipd_mount_read_aheads_total", "Spans fetched ahead of reads.", func(s api.MountStats) int64 { return s.ReadAheads }},
	{"clipd_mount_reads_total", "Read requests from the kernel.", func(s api.MountStats) int64 { return s.Reads }},
	{"clipd_mount_bytes_read_total", "Bytes returned to the kernel.", func(s api.MountStats) int64 { return s.BytesRead }},
}

// metrics writes the Prometheus text exposition format (version 0.0.4) by
// hand: a handful of families does not justify client_golang.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	all := s.snapshot()
	// Each serving process is asked once per scrape; the host totals below
	// reuse these figures.
	stats := s.statsOf(r.Context(), all)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, "# HELP clipd_build_info Version of the running clipd.\n# TYPE clipd_build_info gauge\n")
	fmt.Fprintf(b, "clipd_build_info{version=\"%s\"} 1\n", escapeLabel(s.version))
	fmt.Fprintf(b, "# HELP clipd_mounts Filesystems currently mounted.\n# TYPE clipd_mounts gauge\nclipd_mounts %d\n", len(all))
	s.writeMountStateMetrics(b, all)
	for _, f := range mountFamilies {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s counter\n", f.name, f.help, f.name)
		for i, e := range all {
			fmt.Fprintf(b, "%s{id=\"%s\",mountpoint=\"%s\"} %d\n", f.name, escapeLabel(e.ID), escapeLabel(e.Mountpoint), f.value(stats[i]))
		}
	}
	s.writeCacheMetrics(b)
	return b.Flush()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
