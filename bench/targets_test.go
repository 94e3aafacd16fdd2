package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runsOf(contender, workload string, secs []float64, moved int64) []Run {
	var out []Run
	for _, s := range secs {
		out = append(out, Run{Profile: "region", Contender: contender, Workload: workload, Seconds: s, BytesMoved: moved, Requests: 3})
	}
	return out
}

// TestTargets checks the ratios and verdicts on region / python-import,
// and that a missing contender is "not measured" rather than met.
func TestTargets(t *testing.T) {
	var r Results
	r.Runs = append(r.Runs, runsOf(FullPull, "python-import", []float64{10, 9, 11}, 100)...)
	r.Runs = append(r.Runs, runsOf(ClipV2, "python-import", []float64{5}, 100)...)
	r.Runs = append(r.Runs, runsOf(ClipdCold, "python-import", []float64{2.5, 3, 2.9}, 19)...)
	r.Runs = append(r.Runs, runsOf(ClipdProfiled, "python-import", []float64{1.9, 2.1, 2.0}, 21)...)
	m := Meta{ImageBytes: 100, Local: map[string]float64{"python-import": 1}}
	got := map[string]Target{}
	for _, x := range Targets(r, m) {
		got[x.Issue+" "+x.What] = x
	}
	region, _ := ProfileByName("region")
	limit := 1 + 2*region.RTT.Seconds() + region.Transfer(19).Seconds()
	for _, c := range []struct {
		key  string
		want float64
		met  bool
	}{
		{"#11 clipd-profiled ÷ full-pull", 0.2, true},
		{"#11 clipd-profiled ÷ physical limit", 2.0 / limit, false},
		{"#11 clipd-cold ÷ full-pull", 0.29, false},
		{"#11 clipd-cold bytes moved ÷ compressed image", 0.19, true},
		{"#11 clipd-profiled bytes moved ÷ compressed image", 0.21, false},
		{"#5 clipd-cold ÷ clip-v2", 0.58, false},
		{"#5 clipd-cold ÷ physical limit", 2.9 / limit, false},
	} {
		x, ok := got[c.key]
		if !ok {
			t.Errorf("no target %q", c.key)
			continue
		}
		if !x.Measured || math.Abs(x.Got-c.want) > 1e-9 || x.Met() != c.met {
			t.Errorf("%s: got %.4f measured %v met %v, want %.4f met %v", c.key, x.Got, x.Measured, x.Met(), c.want, c.met)
		}
	}

	// Without clipd-profiled runs its targets are not measured, not met.
	var cold Results
	for _, x := range r.Runs {
		if x.Contender != ClipdProfiled {
			cold.Runs = append(cold.Runs, x)
		}
	}
	for _, x := range Targets(cold, m) {
		if strings.HasPrefix(x.What, "clipd-profiled") && (x.Measured || x.Met() || x.Verdict() != "not measured") {
			t.Errorf("%s without runs: %+v %s", x.What, x, x.Verdict())
		}
	}
}

// TestCrossRows checks the cross-workload rows, the wasted bytes and the
// "ever slower" verdict.
func TestCrossRows(t *testing.T) {
	var r Results
	r.Runs = append(r.Runs, runsOf(ClipdCold, "ls-lR", []float64{1.0, 1.2, 1.1}, 0)...)
	r.Runs = append(r.Runs, runsOf(ClipdCold, "cat-5mb", []float64{0.8, 0.9, 0.85}, 2<<20)...)
	for _, w := range []string{"ls-lR", "cat-5mb"} {
		secs := map[string][]float64{"ls-lR": {1.05, 1.0, 1.3}, "cat-5mb": {0.9, 0.95, 0.7}}[w]
		for _, x := range runsOf(ClipdProfiledCross, w, secs, 12<<20) {
			x.ProfileFrom = "python-import"
			x.Prefetch = &Prefetch{Planned: 34, Fetched: 34, Used: 2, Wasted: 32}
			r.Runs = append(r.Runs, x)
		}
	}
	rows := CrossRows(r, "region")
	if len(rows) != 2 || rows[0].Workload != "ls-lR" || rows[1].Workload != "cat-5mb" {
		t.Fatalf("rows %+v", rows)
	}
	ls, cat := rows[0], rows[1]
	if ls.From != "python-import" || ls.Seconds != 1.05 || ls.ColdSeconds != 1.1 || ls.MaxSeconds != 1.3 || ls.Slower() {
		t.Errorf("ls-lR row %+v", ls)
	}
	if ls.ExtraBytes() != 12<<20 || ls.WastedSpans != 32 || ls.Planned != 34 || ls.PrefetchRuns != 3 {
		t.Errorf("ls-lR bytes/spans %+v", ls)
	}
	if !cat.Slower() || cat.ExtraBytes() != 10<<20 {
		t.Errorf("cat-5mb row %+v: median 0.9 > 0.85 is slower", cat)
	}
	if v := CrossVerdict(rows); !strings.Contains(v, "slower") || !strings.Contains(v, "1 of 2") || !strings.Contains(v, "cat-5mb") {
		t.Errorf("verdict %q", v)
	}
	if v := CrossVerdict(rows[:1]); !strings.Contains(v, "never slower") {
		t.Errorf("verdict %q", v)
	}
	rows[0].ColdN = 0
	if v := CrossVerdict(rows[:1]); !strings.Contains(v, "not measured") {
		t.Errorf("verdict without clipd-cold %q", v)
	}
}

// TestReportSections renders a report with profiled, cross and scale runs
// and checks the sections and verdicts are there.
func TestReportSections(t *testing.T) {
	var r Results
	r.Runs = append(r.Runs, runsOf(FullPull, "python-import", []float64{10}, 100)...)
	r.Runs = append(r.Runs, runsOf(ClipdCold, "python-import", []float64{2.5}, 19)...)
	p := runsOf(ClipdProfiled, "python-import", []float64{1.5}, 20)
	p[0].Prefetch, p[0].ProfileFrom, p[0].ProfileSpans = &Prefetch{Planned: 34, Fetched: 30, Used: 29, Wasted: 1}, "python-import", 34
	r.Runs = append(r.Runs, p...)
	r.Runs = append(r.Runs, runsOf(ClipdCold, "ls-lR", []float64{1}, 0)...)
	x := runsOf(ClipdProfiledCross, "ls-lR", []float64{0.9}, 12)
	x[0].ProfileFrom = "python-import"
	r.Runs = append(r.Runs, x...)
	r.Scale = &Scale{Files: 100000, Layers: 10, MountSeconds: []float64{0.1, 0.3, 0.15}, HWMAfterMount: 30 << 20, HWMAfterLs: 70 << 20, LsTreeSeconds: []float64{2}}
	out := string(Report(r, Meta{ImageBytes: 100, Local: map[string]float64{"python-import": 1}}))
	for _, want := range []string{
		"## Prefetch profiles (clipd-profiled)", "| region | python-import | 1 | 1.500 | 0.60 |",
		"## Profile recorded on one workload, used with another (region)", "**never slower**",
		"| #11 | clipd-profiled ÷ full-pull ≤ 0.2× | 0.150× | met |",
		"| #11 | clipd-cold ÷ full-pull ≤ 0.28× | 0.250× | met |",
		"## Scale image", "scale: median mount request (s): 0.15 s (target ≤ 0.2 s): met",
		"VmHWM after mount and `ls -lR` (MiB): 70 MiB (target ≤ 64 MiB): **not met**",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// Scale only: no medians, the scale section.
	only := string(Report(Results{Scale: r.Scale}, Meta{}))
	if strings.Contains(only, "## Medians") || !strings.Contains(only, "## Scale image") {
		t.Errorf("scale-only report:\n%s", only)
	}
}

// TestWriteJSONOptionalFields checks the optional keys: prefetch,
// profile_from and profile_spans on a run, scale at the top level.
func TestWriteJSONOptionalFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latest.json")
	in := Results{Commit: "c", Runs: []Run{{Profile: "region", Contender: ClipdProfiled, Workload: "python-import",
		Prefetch: &Prefetch{Planned: 3, Fetched: 3, Used: 2, Wasted: 1}, ProfileFrom: "python-import", ProfileSpans: 3}},
		Scale: &Scale{Files: 5, MountSeconds: []float64{0.1}}}
	if err := WriteJSON(path, in); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var raw struct {
		Runs  []map[string]json.RawMessage `json:"runs"`
		Scale map[string]json.RawMessage   `json:"scale"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	for _, k := range []string{"prefetch", "profile_from", "profile_spans"} {
		if err := json.Compact(&got, raw.Runs[0][k]); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		got.WriteByte(' ')
	}
	if got.String() != `{"planned":3,"fetched":3,"used":2,"wasted":1} "python-import" 3 ` {
		t.Errorf("optional run fields: %s", got.String())
	}
	var ms bytes.Buffer
	_ = json.Compact(&ms, raw.Scale["mount_seconds"])
	if string(raw.Scale["files"]) != "5" || ms.String() != "[0.1]" {
		t.Errorf("scale: %s", b)
	}
	out, err := ReadJSON(path)
	if err != nil || out.Runs[0].Prefetch.Wasted != 1 || out.Scale.Files != 5 {
		t.Errorf("read back %+v, %v", out, err)
	}
}
