package daemon

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/clipd/clipd/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// daemonMetrics are the figures the daemon keeps across scrapes: its Go
// runtime and process, and the latency of mount requests. Everything else
// on /metrics is read afresh at each scrape (scrapeCollector) or comes from
// the serving processes (servingFamilies).
type daemonMetrics struct {
	reg          *prometheus.Registry
	mountSeconds *prometheus.HistogramVec
}

func newDaemonMetrics() *daemonMetrics {
	m := &daemonMetrics{
		reg: prometheus.NewRegistry(),
		mountSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clipd_mount_request_duration_seconds",
			Help:    "Time to answer a mount request (POST /v1/mounts), by HTTP status.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"code"}),
	}
	m.reg.MustRegister(m.mountSeconds, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// MetricsSource is implemented by a Mounted whose serving process gives
// its own metrics with its figures: histograms and error counters in the
// Prometheus text format, as of its latest Stats call. The daemon labels
// them with the mount's id and mountpoint.
type MetricsSource interface {
	Metrics() string
}

// metrics answers GET /metrics. Each serving process is asked once per
// scrape (statsOf); its figures and its own exposition are both used.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	all := s.snapshot()
	stats := s.statsOf(r.Context(), all)
	scrape := prometheus.NewRegistry()
	scrape.MustRegister(&scrapeCollector{s: s, all: all, stats: stats})
	g := prometheus.Gatherers{s.prom.reg, scrape, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		return s.servingFamilies(all), nil
	})}
	promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
	return nil
}

// servingFamilies merges the expositions of the serving processes, each
// series labelled with its mount's id and mountpoint. An exposition that
// does not parse is left out (and logged): one bad process must not cost
// the whole scrape.
func (s *Server) servingFamilies(all []*entry) []*dto.MetricFamily {
	byName := map[string]*dto.MetricFamily{}
	for _, e := range all {
		src, ok := e.m.(MetricsSource)
		if !ok {
			continue
		}
		text := src.Metrics()
		if text == "" {
			continue
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			s.log.Warn("metrics of serving process do not parse", "id", e.ID, "pid", e.PID, "err", err)
			continue
		}
		for name, f := range fams {
			for _, m := range f.Metric {
				m.Label = append(m.Label, labelPair("id", e.ID), labelPair("mountpoint", e.Mountpoint))
				slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
			}
			if have, ok := byName[name]; ok && have.GetType() == f.GetType() {
				have.Metric = append(have.Metric, f.Metric...)
			} else if !ok {
				byName[name] = f
			}
		}
	}
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, f := range byName {
		out = append(out, f)
	}
	return out
}

func labelPair(name, value string) *dto.LabelPair { return &dto.LabelPair{Name: &name, Value: &value} }

// mountLabels are the labels of every per-mount series: the mountpoint
// does not change for an id, so it adds no series, and spares a join with
// clipd_mount_info in most queries.
var mountLabels = []string{"id", "mountpoint"}

// mountCounter is one per-mount counter, read from the mount's figures.
type mountCounter struct {
	desc  *prometheus.Desc
	value func(api.MountStats) int64
}

func newMountCounter(name, help string, value func(api.MountStats) int64) mountCounter {
	return mountCounter{prometheus.NewDesc(name, help, mountLabels, nil), value}
}

var mountCounters = []mountCounter{
	newMountCounter("clipd_mount_fetched_bytes_total", "Bytes received from the registry for this mount.", func(s api.MountStats) int64 { return s.BytesFetched }),
	newMountCounter("clipd_mount_registry_requests_total", "Blob requests made for this mount (each retry counts).", func(s api.MountStats) int64 { return s.Requests }),
	newMountCounter("clipd_mount_cache_hits_total", "Reads served from the local cache alone.", func(s api.MountStats) int64 { return s.CacheHits }),
	newMountCounter("clipd_mount_cache_misses_total", "Span reads that needed a fetch from the registry.", func(s api.MountStats) int64 { return s.CacheMisses }),
	newMountCounter("clipd_mount_cache_read_bytes_total", "Bytes read from the local cache.", func(s api.MountStats) int64 { return s.BytesFromCache }),
	newMountCounter("clipd_mount_read_aheads_total", "Spans fetched ahead of reads.", func(s api.MountStats) int64 { return s.ReadAheads }),
	newMountCounter("clipd_mount_reads_total", "Read requests from the kernel.", func(s api.MountStats) int64 { return s.Reads }),
	newMountCounter("clipd_mount_read_bytes_total", "Bytes returned to the kernel.", func(s api.MountStats) int64 { return s.BytesRead }),
	newMountCounter("clipd_mount_read_errors_total", "Reads answered with an error (EIO): a file of the image could not be read.", func(s api.MountStats) int64 { return s.ReadErrors }),
}

var (
	buildInfoDesc = prometheus.NewDesc("clipd_build_info", "Version of the running clipd daemon.", []string{"version"}, nil)
	mountsDesc    = prometheus.NewDesc("clipd_mounts", "Mounts in the table (failed ones included).", nil, nil)
	failedDesc    = prometheus.NewDesc("clipd_mounts_failed", "Mounts whose serving process died (listed until deleted).", nil, nil)
	failuresDesc  = prometheus.NewDesc("clipd_serving_process_failures_total", "Serving processes found dead by this daemon.", nil, nil)
	mountUpDesc   = prometheus.NewDesc("clipd_mount_up", "1 when the mount is served, 0 when its serving process died.", mountLabels, nil)
	mountInfoDesc = prometheus.NewDesc("clipd_mount_info", "The serving process of a mount and its version (always 1).",
		[]string{"id", "mountpoint", "pid", "version"}, nil)
)

// scrapeCollector gives the figures of one scrape: the mount table, each
// mount's counters, the host's totals and the cache.
type scrapeCollector struct {
	s     *Server
	all   []*entry
	stats []api.MountStats
}

// Describe sends nothing: the collector is unchecked, built per scrape.
func (c *scrapeCollector) Describe(chan<- *prometheus.Desc) {}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	failures := s.failures
	s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(buildInfoDesc, prometheus.GaugeValue, 1, s.version)
	ch <- prometheus.MustNewConstMetric(mountsDesc, prometheus.GaugeValue, float64(len(c.all)))
	ch <- prometheus.MustNewConstMetric(failuresDesc, prometheus.CounterValue, float64(failures))
	failed := 0
	for i, e := range c.all {
		up := 1.0
		if e.State == api.MountFailed {
			up, failed = 0, failed+1
		}
		ch <- prometheus.MustNewConstMetric(mountUpDesc, prometheus.GaugeValue, up, e.ID, e.Mountpoint)
		ch <- prometheus.MustNewConstMetric(mountInfoDesc, prometheus.GaugeValue, 1, e.ID, e.Mountpoint, strconv.Itoa(e.PID), e.Version)
		for _, mc := range mountCounters {
			ch <- prometheus.MustNewConstMetric(mc.desc, prometheus.CounterValue, float64(mc.value(c.stats[i])), e.ID, e.Mountpoint)
		}
	}
	ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.GaugeValue, float64(failed))
	s.collectHostMetrics(ch)
}
