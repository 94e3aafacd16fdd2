package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Inspect reads the ledger and the entries and writes nothing; a missing
// directory is an error, not created.
func TestInspectIsReadOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	if _, err := Inspect(dir); err == nil || !strings.Contains(err.Error(), "cache dir "+dir+" does not exist") {
		t.Fatalf("Inspect of a missing dir: %v", err)
	}
	if _, err := OpenWith(dir, Options{MustExist: true}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("OpenWith MustExist of a missing dir: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cache dir created: %v", err)
	}
	s, err := OpenWith(dir, Options{MaxSize: 1 << 20, MinFree: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a/1", "a/2", "b/1"} {
		if _, err := s.Put(k, bytes.NewReader(payload(1, 1000))); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	ledger, _ := os.ReadFile(filepath.Join(dir, ledgerName))

	v, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := v.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 3 || st.Used != 3*(headerSize+1000) || st.MaxSize != 1<<20 || st.MinFree != 1 || st.Limit <= 0 {
		t.Fatalf("stats %+v", st)
	}
	if list, err := v.List(); err != nil || len(list) != 3 {
		t.Fatalf("List: %d entries, %v", len(list), err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, ledgerName)); !bytes.Equal(after, ledger) {
		t.Fatal("Inspect changed the ledger")
	}
}
