package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/clipd/clipd/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// exposing is a Mounted whose serving process gives an exposition.
type exposing struct {
	Mounted
	text string
}

func (e exposing) Metrics() string { return e.text }

const servingText = `# HELP clipd_span_fetch_duration_seconds Time to fetch.
# TYPE clipd_span_fetch_duration_seconds histogram
clipd_span_fetch_duration_seconds_bucket{host="r:5000",le="0.1"} 1
clipd_span_fetch_duration_seconds_bucket{host="r:5000",le="+Inf"} 2
clipd_span_fetch_duration_seconds_sum{host="r:5000"} 0.75
clipd_span_fetch_duration_seconds_count{host="r:5000"} 2
# HELP clipd_span_fetch_errors_total Failed fetches.
# TYPE clipd_span_fetch_errors_total counter
clipd_span_fetch_errors_total{host="r:5000",kind="5xx"} 3
`

// TestServingFamiliesMerged: the expositions of serving processes are
// merged into one family per name, each series labelled with its mount; an
// exposition that does not parse, or a mount without one, is left out and
// the rest still gathers.
func TestServingFamiliesMerged(t *testing.T) {
	var logs bytes.Buffer
	s := &Server{log: slog.New(slog.NewTextHandler(&logs, nil))}
	all := []*entry{
		{StateEntry: StateEntry{ID: "a", Mountpoint: "/m/a"}, m: exposing{text: servingText}},
		{StateEntry: StateEntry{ID: "b", Mountpoint: "/m/b"}, m: exposing{text: servingText}},
		{StateEntry: StateEntry{ID: "c", Mountpoint: "/m/c"}, m: exposing{text: "clipd_x{ 1\n"}},
		{StateEntry: StateEntry{ID: "d", Mountpoint: "/m/d"}, m: exposing{}},
	}
	fams, err := prometheus.Gatherers{prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		return s.servingFamilies(all), nil
	})}.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	m, err := testenv.ParseMetrics(text.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		mine := map[string]string{"id": id, "mountpoint": "/m/" + id, "host": "r:5000"}
		if v, ok := m.Value("clipd_span_fetch_duration_seconds", mine); !ok || v != 2 || m.Type("clipd_span_fetch_duration_seconds") != "histogram" {
			t.Errorf("histogram of mount %s: %v %v %s\n%s", id, v, ok, m.Type("clipd_span_fetch_duration_seconds"), text.String())
		}
		mine["kind"] = "5xx"
		if v, ok := m.Value("clipd_span_fetch_errors_total", mine); !ok || v != 3 {
			t.Errorf("errors of mount %s: %v %v\n%s", id, v, ok, text.String())
		}
	}
	if n := len(m.Series("clipd_span_fetch_errors_total", nil)); n != 2 {
		t.Errorf("%d error series, want 2 (mounts a and b)", n)
	}
	if _, ok := m["clipd_x"]; ok || !strings.Contains(logs.String(), "do not parse") || !strings.Contains(logs.String(), "id=c") {
		t.Errorf("a bad exposition should be left out and logged:\n%s", logs.String())
	}
}

// TestCheckConventionsCatchesOldNames: the convention check the metrics
// tests rely on rejects the names this daemon used to have.
func TestCheckConventionsCatchesOldNames(t *testing.T) {
	m, err := testenv.ParseMetrics(`# HELP clipd_mount_bytes_fetched_total x
# TYPE clipd_mount_bytes_fetched_total counter
clipd_mount_bytes_fetched_total 1
# HELP clipd_reads x
# TYPE clipd_reads counter
clipd_reads 1
# HELP clipd_mounts_total x
# TYPE clipd_mounts_total gauge
clipd_mounts_total 1
# HELP clipd_latency x
# TYPE clipd_latency histogram
clipd_latency_bucket{le="+Inf"} 1
clipd_latency_sum 1
clipd_latency_count 1
# HELP clipd_build_info x
# TYPE clipd_build_info gauge
clipd_build_info{version="1"} 2
`)
	if err != nil {
		t.Fatal(err)
	}
	errs := m.CheckConventions("clipd_")
	if len(errs) != 5 {
		t.Errorf("%d violations, want 5 (one per family): %v", len(errs), errs)
	}
}
