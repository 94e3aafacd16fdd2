package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// TestWriteJSONContract checks the exact shape of latest.json: the two
// top-level keys and the seven keys of every run, and that it reads back.
func TestWriteJSONContract(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latest.json")
	in := Results{Commit: "abc123", Runs: []Run{
		{Profile: "region", Contender: ClipdCold, Workload: "python-import", Seconds: 0.5, BytesMoved: 1234, BytesRead: 99, Requests: 7},
		{Profile: "far", Contender: FullPull, Workload: "ls-lR", Seconds: 12.25, BytesMoved: 70 << 20, BytesRead: 0, Requests: 5},
	}}
	if err := WriteJSON(path, in); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("latest.json is not a JSON object: %v\n%s", err, b)
	}
	if keys := sortedKeys(raw); !slices.Equal(keys, []string{"commit", "runs"}) {
		t.Errorf("top-level keys %v, want [commit runs]", keys)
	}
	var runs []map[string]any
	if err := json.Unmarshal(raw["runs"], &runs); err != nil {
		t.Fatal(err)
	}
	want := []string{"bytes_moved", "bytes_read", "contender", "profile", "requests", "seconds", "workload"}
	for i, r := range runs {
		if keys := sortedKeys(r); !slices.Equal(keys, want) {
			t.Errorf("run %d keys %v, want %v", i, keys, want)
		}
	}
	if runs[0]["seconds"] != 0.5 || runs[1]["bytes_moved"] != float64(70<<20) {
		t.Errorf("values not written as numbers: %v", runs)
	}
	out, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("read back %+v, want %+v", out, in)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".latest.json.*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// TestWriteJSONEmptyRuns checks that no runs give [] rather than null.
func TestWriteJSONEmptyRuns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latest.json")
	if err := WriteJSON(path, Results{Commit: "x"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["runs"]) != "[]" {
		t.Errorf("runs = %s, want []", raw["runs"])
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
