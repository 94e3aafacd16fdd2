package testenv

import (
	"fmt"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed Prometheus text exposition, by family name. Parsing
// checks the syntax, the TYPE lines and that no family appears twice, which
// substring checks do not.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the text clipd serves on /metrics and fails t when
// it is not a valid exposition.
func ParseMetrics(t testing.TB, text string) Metrics {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, text)
	}
	return fams
}

// Value returns the value of the one sample of family name whose labels
// include labels (name, value pairs), after checking the family's type.
// It fails t when the family is missing or of another type, or when not
// exactly one sample matches.
func (m Metrics) Value(t testing.TB, name string, typ dto.MetricType, labels ...string) float64 {
	t.Helper()
	v, err := m.value(name, typ, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Expect fails t (without stopping it) unless family name of type typ has
// one sample with labels whose value is want.
func (m Metrics) Expect(t testing.TB, name string, typ dto.MetricType, want float64, labels ...string) {
	t.Helper()
	v, err := m.value(name, typ, labels...)
	if err != nil {
		t.Error(err)
		return
	}
	if v != want {
		t.Errorf("metric %s%v = %v, want %v", name, labels, v, want)
	}
}

func (m Metrics) value(name string, typ dto.MetricType, labels ...string) (float64, error) {
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("metric %s: labels %v are not name, value pairs", name, labels)
	}
	f, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("metric %s missing (have %v)", name, m.names())
	}
	if f.GetType() != typ {
		return 0, fmt.Errorf("metric %s has type %s, want %s", name, f.GetType(), typ)
	}
	var found []*dto.Metric
	for _, s := range f.GetMetric() {
		if hasLabels(s, labels) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		return 0, fmt.Errorf("metric %s: %d samples with labels %v, want 1 (samples: %v)", name, len(found), labels, f.GetMetric())
	}
	s := found[0]
	switch typ {
	case dto.MetricType_COUNTER:
		return s.GetCounter().GetValue(), nil
	case dto.MetricType_GAUGE:
		return s.GetGauge().GetValue(), nil
	case dto.MetricType_UNTYPED:
		return s.GetUntyped().GetValue(), nil
	}
	return 0, fmt.Errorf("metric %s: type %s has no single value", name, typ)
}

func hasLabels(s *dto.Metric, labels []string) bool {
	for i := 0; i < len(labels); i += 2 {
		ok := false
		for _, lp := range s.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func (m Metrics) names() []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	return out
}
