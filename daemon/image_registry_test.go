package daemon

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestImageMountsShareOneBuild: concurrent mounts of one unindexed image
// build its index once (each layer streamed once), all mount the stored
// index, the table and the store say so, and a budget or a prune never
// removes an index in use.
func TestImageMountsShareOneBuild(t *testing.T) {
	host := testenv.StartRegistry(t)
	proxy := testenv.StartCountingProxy(t, host)
	img, err := fixture.Image()
	if err != nil {
		t.Fatal(err)
	}
	ref := proxy.Addr + "/fix:a"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	proxy.Reset()

	h := newHarness(t)
	h.cfg.Index.MaxSize = 1 // everything is over budget: only use protects
	h.start()
	const n = 4
	var wg sync.WaitGroup
	infos := make([]*api.MountInfo, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := api.CreateMount{Image: ref, Mountpoint: h.mp(fmt.Sprint("m", i))}
			if i == 0 {
				req.Auth = &api.RegistryAuth{Username: "u", Password: "p"}
			}
			infos[i], errs[i] = h.client.Mount(context.Background(), req)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("mount %d: %v\n%s", i, errs[i], h.logs)
		}
		mi := infos[i]
		if mi.ImageRef != ref || mi.ManifestDigest != digest.String() || (mi.IndexSource != "built" && mi.IndexSource != "store") {
			t.Errorf("mount %d: %+v", i, mi)
		}
		if mi.Archive != infos[0].Archive {
			t.Errorf("mount %d serves %s, mount 0 %s", i, mi.Archive, infos[0].Archive)
		}
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		gets := 0
		for _, br := range proxy.Blob(d.String()) {
			if br.Method == http.MethodGet {
				gets++
			}
		}
		if gets != 1 {
			t.Errorf("layer %s fetched %d times, want once", d, gets)
		}
	}
	h.fm.mu.Lock()
	withCreds := 0
	for _, req := range h.fm.reqs {
		if req.ArchiveFile == nil {
			t.Errorf("mount of %s without an open archive", req.Mountpoint)
		}
		if req.Credentials != nil {
			withCreds++
			if req.Credentials.Username != "u" {
				t.Errorf("credentials not passed on: %v", req.Credentials)
			}
		}
	}
	h.fm.mu.Unlock()
	if withCreds != 1 {
		t.Errorf("%d mount requests carried credentials, want 1", withCreds)
	}
	for _, e := range h.state() {
		if e.ImageRef != ref || e.ManifestDigest != digest.String() {
			t.Errorf("mount table entry %+v", e)
		}
	}
	var list []api.StoredIndex
	if err := h.client.Do(context.Background(), http.MethodPost, "/v1/images/prune", nil, &list); err != nil || len(list) != 0 {
		t.Errorf("prune removed %+v (%v) while in use", list, err)
	}
	if err := h.client.Do(context.Background(), http.MethodGet, "/v1/images", nil, &list); err != nil || len(list) != 1 ||
		len(list[0].Mounts) != n || list[0].ManifestDigest != digest.String() {
		t.Fatalf("GET /v1/images: %+v %v", list, err)
	}
	for _, mi := range infos {
		if _, err := h.client.Unmount(context.Background(), mi.ID, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.client.Do(context.Background(), http.MethodPost, "/v1/images/prune", nil, &list); err != nil || len(list) != 1 {
		t.Errorf("prune after unmount removed %+v (%v), want the one index", list, err)
	}
}
