package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/clipd/clipd/index"
)

func TestDescribeImageConfig(t *testing.T) {
	var b bytes.Buffer
	err := describeImageConfig(&b, &index.ImageInfo{Entrypoint: []string{"/init", "a b"}, Cmd: []string{"python3"},
		Env: []string{"PATH=/bin", "LANG=C"}, User: "app:staff", WorkingDir: "/srv"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`entrypoint:`, `["/init", "a b"]`, `["python3"]`, `app:staff`, `/srv`, `"PATH=/bin"`, `"LANG=C"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("image config output lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := describeImageConfig(&b, nil); err != nil || !strings.Contains(b.String(), "not recorded") {
		t.Errorf("no image config: %v %q", err, b.String())
	}
}
