package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/profile"
)

// The profile calls list, show and remove what serving processes stored in
// state_dir/profiles, and answer 404 and 400 with their codes.
func TestProfilesAPI(t *testing.T) {
	h := newHarness(t).start()
	ctx := context.Background()
	if list, err := h.client.Profiles(ctx); err != nil || len(list) != 0 {
		t.Fatalf("empty store: %+v %v", list, err)
	}
	st, err := profile.Open(filepath.Join(h.cfg.Daemon.StateDir, profile.Dir))
	if err != nil {
		t.Fatal(err)
	}
	image := "sha256:" + strings.Repeat("ab", 32)
	layer := "sha256:" + strings.Repeat("01", 32)
	rec := profile.Recording{Image: image, Layers: []profile.Geometry{{Digest: layer, SpanSize: 1 << 20, SpanCount: 10}},
		Touches: []profile.Touch{{Ref: profile.Ref{Span: 7}}, {Ref: profile.Ref{Span: 2}, At: time.Second}}}
	if _, err := st.Merge(rec); err != nil {
		t.Fatal(err)
	}
	// Another image's file, unreadable: listed with its error.
	bad := "sha256:" + strings.Repeat("cd", 32)
	badFile, _ := st.Path(bad)
	if err := os.WriteFile(badFile, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}

	list, err := h.client.Profiles(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if p := list[0]; p.Image != image || p.Layers != 1 || p.Spans != 2 || p.Recordings != 1 || p.Error != "" || p.Size == 0 {
		t.Errorf("listed profile: %+v", p)
	}
	if p := list[1]; p.Image != bad || p.Error == "" {
		t.Errorf("unreadable profile: %+v, want listed with its error", p)
	}

	raw, err := h.client.Profile(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	var p profile.Profile
	if err := json.Unmarshal(raw, &p); err != nil || p.Image != image || len(p.Layers) != 1 || len(p.Layers[0].Spans) != 2 ||
		p.Layers[0].Spans[0].Index != 7 || p.Layers[0].Spans[1].Index != 2 {
		t.Fatalf("profile: %s %v", raw, err)
	}
	_, err = h.client.Profile(ctx, bad)
	wantAPIError(t, err, 422, api.CodeBadProfile, badFile)

	other := "sha256:" + strings.Repeat("ef", 32)
	_, err = h.client.Profile(ctx, other)
	wantAPIError(t, err, 404, api.CodeProfileNotFound, other)
	err = h.client.RemoveProfile(ctx, other)
	wantAPIError(t, err, 404, api.CodeProfileNotFound, other)
	for _, key := range []string{"sha256:abc", "latest", "sha512:" + strings.Repeat("ab", 64)} {
		_, err = h.client.Profile(ctx, key)
		wantAPIError(t, err, 400, api.CodeBadRequest, "sha256:<64 hex digits>")
		err = h.client.RemoveProfile(ctx, key)
		wantAPIError(t, err, 400, api.CodeBadRequest, "sha256:<64 hex digits>")
	}
	err = h.client.Do(ctx, http.MethodPut, "/v1/profiles/"+image, nil, nil)
	wantAPIError(t, err, 405, api.CodeMethod, "method not allowed")

	if err := h.client.RemoveProfile(ctx, image); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(image); err == nil {
		t.Error("profile still stored after DELETE")
	}
	if list, err := h.client.Profiles(ctx); err != nil || len(list) != 1 || list[0].Image != bad {
		t.Errorf("list after remove: %+v %v", list, err)
	}
}
