package testenv

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed Prometheus text exposition, by family name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the text exposition of /metrics with Prometheus's own
// parser: a malformed line, a family typed twice or a histogram with bad
// buckets is an error.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Metrics(fams), nil
}

// Type is the type of family name, or "" when there is none.
func (m Metrics) Type(name string) string {
	f, ok := m[name]
	if !ok {
		return ""
	}
	return strings.ToLower(f.GetType().String())
}

// Series returns the series of family name whose labels include want.
func (m Metrics) Series(name string, want map[string]string) []*dto.Metric {
	f, ok := m[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
	for _, s := range f.Metric {
		if hasLabels(s, want) {
			out = append(out, s)
		}
	}
	return out
}

// Value sums the series of family name whose labels include want: the
// value of counters, gauges and untyped series, the sample count of
// histograms and summaries. ok is false when no series matches.
func (m Metrics) Value(name string, want map[string]string) (v float64, ok bool) {
	for _, s := range m.Series(name, want) {
		ok = true
		switch {
		case s.Counter != nil:
			v += s.Counter.GetValue()
		case s.Gauge != nil:
			v += s.Gauge.GetValue()
		case s.Untyped != nil:
			v += s.Untyped.GetValue()
		case s.Histogram != nil:
			v += float64(s.Histogram.GetSampleCount())
		case s.Summary != nil:
			v += float64(s.Summary.GetSampleCount())
		}
	}
	return v, ok
}

// Expect fails t (without stopping it) unless family name has type kind
// ("counter", "gauge", "histogram") and its series whose labels include
// labels add up to want.
func (m Metrics) Expect(t testing.TB, name, kind string, want float64, labels map[string]string) {
	t.Helper()
	if got := m.Type(name); got != kind {
		t.Errorf("metric %s has type %q, want %q", name, got, kind)
		return
	}
	if v, ok := m.Value(name, labels); !ok || v != want {
		t.Errorf("metric %s%v = %v (found: %v), want %v", name, labels, v, ok, want)
	}
}

// Labels returns the labels of s.
func Labels(s *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range s.Label {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func hasLabels(s *dto.Metric, want map[string]string) bool {
	have := Labels(s)
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

var (
	metricName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	// Units that belong at the end of a name, never in its middle.
	unitInMiddle = regexp.MustCompile(`_(bytes|seconds)_[a-z]`)
)

// CheckConventions reports the families of m (those named with prefix)
// that break Prometheus's naming conventions: counters end in _total,
// nothing else does; the unit comes last (…_bytes, …_seconds, or
// …_bytes_total); _info families are gauges of value 1; histograms are of
// a unit.
func (m Metrics) CheckConventions(prefix string) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		f := m[name]
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s (%s): "+format, append([]any{name, strings.ToLower(f.GetType().String())}, a...)...))
		}
		if !metricName.MatchString(name) {
			bad("not a snake_case name")
		}
		if f.GetHelp() == "" {
			bad("no HELP")
		}
		total := strings.HasSuffix(name, "_total")
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			if !total {
				bad("a counter's name ends in _total")
			}
		case dto.MetricType_HISTOGRAM:
			if !strings.HasSuffix(name, "_seconds") && !strings.HasSuffix(name, "_bytes") {
				bad("a histogram's name ends in its unit")
			}
		case dto.MetricType_GAUGE:
			if total {
				bad("only counters end in _total")
			}
		default:
			bad("untyped")
		}
		if unitInMiddle.MatchString(strings.TrimSuffix(name, "_total")) {
			bad("the unit goes last")
		}
		if strings.HasSuffix(name, "_info") {
			for _, s := range f.Metric {
				if s.Gauge == nil || s.Gauge.GetValue() != 1 {
					bad("an _info series is a gauge of value 1")
					break
				}
			}
		}
	}
	return errs
}
