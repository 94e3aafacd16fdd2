package testenv

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// refNameAnnotation tags a manifest in an OCI layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// PushLayout pushes the image tagged tag in the OCI layout layoutDir to ref
// (e.g. "127.0.0.1:5000/repo:tag"), failing the test on error.
func PushLayout(t testing.TB, layoutDir, tag, ref string) {
	t.Helper()
	if err := PushLayoutContext(context.Background(), layoutDir, tag, ref); err != nil {
		t.Fatal(err)
	}
}

// PushLayoutContext pushes the image tagged tag in the OCI layout layoutDir to
// ref with go-containerregistry's remote.Write, which sends blobs exactly as
// stored (skopeo would recompress uncompressed layers). A tag naming an image
// index is pushed as an index.
func PushLayoutContext(ctx context.Context, layoutDir, tag, ref string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("push %s:%s: parse %q: %w", layoutDir, tag, ref, err)
	}
	idx, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		return fmt.Errorf("push %s:%s: %w", layoutDir, tag, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("push %s:%s: %w", layoutDir, tag, err)
	}
	var desc *v1.Descriptor
	var tags []string
	for i, m := range im.Manifests {
		tags = append(tags, m.Annotations[refNameAnnotation])
		if m.Annotations[refNameAnnotation] == tag {
			desc = &im.Manifests[i]
		}
	}
	if desc == nil {
		return fmt.Errorf("push %s:%s: no manifest tagged %q (tags: %q)", layoutDir, tag, tag, tags)
	}
	if desc.MediaType.IsIndex() {
		child, err := idx.ImageIndex(desc.Digest)
		if err != nil {
			return fmt.Errorf("push %s:%s: %w", layoutDir, tag, err)
		}
		if err := remote.WriteIndex(r, child, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("push %s:%s to %s: %w", layoutDir, tag, ref, err)
		}
		return nil
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		return fmt.Errorf("push %s:%s: %w", layoutDir, tag, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s:%s to %s: %w", layoutDir, tag, ref, err)
	}
	return nil
}
