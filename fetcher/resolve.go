package fetcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/clipd/clipd/index"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// LayoutPrefix starts an image source that is a local OCI image layout.
const LayoutPrefix = "oci-layout:"

// RefNameAnnotation tags a manifest in an OCI layout's index.json.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// DefaultPlatform is linux on the architecture clipd runs on.
func DefaultPlatform() *v1.Platform {
	return &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// ResolveImage opens source, a registry reference (HOST/REPO:TAG or
// HOST/REPO@sha256:...) or "oci-layout:DIR[:TAG]", choosing platform (nil:
// DefaultPlatform) from a multi-platform index. It returns the image and
// where its blobs live.
func ResolveImage(ctx context.Context, source string, platform *v1.Platform, opts Options) (v1.Image, index.Source, error) {
	if platform == nil {
		platform = DefaultPlatform()
	}
	var (
		img v1.Image
		src index.Source
		err error
	)
	if rest, ok := strings.CutPrefix(source, LayoutPrefix); ok {
		img, src, err = resolveLayout(rest, platform)
	} else {
		img, src, err = resolveRegistry(ctx, source, platform, opts)
	}
	if err == nil {
		err = checkPlatform(img, platform)
	}
	if err != nil {
		return nil, index.Source{}, fmt.Errorf("resolve image %s: %w", source, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, index.Source{}, fmt.Errorf("resolve image %s: manifest digest: %w", source, err)
	}
	src.Manifest = d.String()
	return img, src, nil
}

// ParseReference parses a registry reference, speaking plain HTTP to hosts
// listed in insecure (go-containerregistry already does for localhost).
func ParseReference(s string, insecure []string) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, err
	}
	if slices.Contains(insecure, ref.Context().RegistryStr()) {
		return name.ParseReference(s, name.Insecure)
	}
	return ref, nil
}

func resolveRegistry(ctx context.Context, s string, platform *v1.Platform, opts Options) (v1.Image, index.Source, error) {
	ref, err := ParseReference(s, opts.Insecure)
	if err != nil {
		return nil, index.Source{}, err
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithPlatform(*platform),
		remote.WithAuthFromKeychain(opts.keychain()),
	}
	if opts.Transport != nil || opts.Hosts != nil {
		ropts = append(ropts, remote.WithTransport(opts.transport()))
	}
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return nil, index.Source{}, err
	}
	if desc.MediaType.IsIndex() {
		// go-containerregistry's own "no child" error does not say which
		// platforms the index has.
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, index.Source{}, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, index.Source{}, fmt.Errorf("read index %s: %w", desc.Digest, err)
		}
		if _, err := matchPlatform(im, platform); err != nil {
			return nil, index.Source{}, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
	}
	img, err := desc.Image()
	if err != nil {
		return nil, index.Source{}, err
	}
	return img, index.Source{
		Registry:   ref.Context().RegistryStr(),
		Repository: ref.Context().RepositoryStr(),
		Reference:  ref.Identifier(),
	}, nil
}

// splitLayout splits "DIR[:TAG]". A colon belongs to DIR when what follows
// it contains a slash, or when the whole string is an existing directory and
// the part before the colon is not.
func splitLayout(s string) (dir, tag string) {
	i := strings.LastIndex(s, ":")
	if i < 0 || strings.Contains(s[i+1:], "/") {
		return s, ""
	}
	if isDir(s) && !isDir(s[:i]) {
		return s, ""
	}
	return s[:i], s[i+1:]
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func resolveLayout(s string, platform *v1.Platform) (v1.Image, index.Source, error) {
	dir, tag := splitLayout(s)
	if dir == "" {
		return nil, index.Source{}, fmt.Errorf("empty layout directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, index.Source{}, err
	}
	idx, err := layout.ImageIndexFromPath(abs)
	if err != nil {
		return nil, index.Source{}, fmt.Errorf("open OCI layout: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, index.Source{}, fmt.Errorf("read OCI layout index: %w", err)
	}
	var tags []string
	var found []v1.Descriptor
	for _, m := range im.Manifests {
		t := m.Annotations[RefNameAnnotation]
		if t != "" {
			tags = append(tags, t)
		}
		if tag == "" || t == tag || strings.HasSuffix(t, ":"+tag) {
			found = append(found, m)
		}
	}
	switch {
	case tag != "" && len(found) == 0:
		return nil, index.Source{}, fmt.Errorf("no manifest tagged %q in %s (tags: %s)", tag, abs, strings.Join(tags, ", "))
	case len(found) == 0:
		return nil, index.Source{}, fmt.Errorf("no manifest in %s", abs)
	}
	desc, err := pickDescriptor(found, platform)
	if err != nil {
		if tag == "" {
			return nil, index.Source{}, fmt.Errorf("%s holds %d manifests, name one with oci-layout:DIR:TAG (tags: %s)", abs, len(found), strings.Join(tags, ", "))
		}
		return nil, index.Source{}, err
	}
	img, err := layoutImage(idx, desc, platform)
	if err != nil {
		return nil, index.Source{}, err
	}
	return img, index.Source{Layout: abs, Reference: tag}, nil
}

// pickDescriptor chooses among several manifests with the same tag by
// platform (some tools tag each platform's manifest directly).
func pickDescriptor(ds []v1.Descriptor, platform *v1.Platform) (v1.Descriptor, error) {
	if len(ds) == 1 {
		return ds[0], nil
	}
	var match []v1.Descriptor
	for _, d := range ds {
		if d.Platform != nil && d.Platform.Satisfies(*platform) {
			match = append(match, d)
		}
	}
	if len(match) != 1 {
		return v1.Descriptor{}, fmt.Errorf("%d manifests match, none or several for platform %s", len(ds), platform)
	}
	return match[0], nil
}

// layoutImage opens desc, descending into nested indexes by platform.
func layoutImage(idx v1.ImageIndex, desc v1.Descriptor, platform *v1.Platform) (v1.Image, error) {
	for depth := 0; depth < 8; depth++ {
		if !desc.MediaType.IsIndex() {
			img, err := idx.Image(desc.Digest)
			if err != nil {
				return nil, fmt.Errorf("open manifest %s: %w", desc.Digest, err)
			}
			return img, nil
		}
		child, err := idx.ImageIndex(desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("open index %s: %w", desc.Digest, err)
		}
		im, err := child.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", desc.Digest, err)
		}
		match, err := matchPlatform(im, platform)
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		idx, desc = child, match
	}
	return nil, fmt.Errorf("indexes nested too deeply")
}

// matchPlatform picks the first manifest of an index for platform; its
// error names the platforms the index has.
func matchPlatform(im *v1.IndexManifest, platform *v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil {
			continue
		}
		if m.Platform.Satisfies(*platform) {
			return m, nil
		}
		have = append(have, m.Platform.String())
	}
	return v1.Descriptor{}, fmt.Errorf("%w %s (has: %s)", ErrNoPlatform, platform, strings.Join(have, ", "))
}

// ErrNoPlatform marks an image that has no manifest for the platform asked.
var ErrNoPlatform = errors.New("no manifest for platform")

// checkPlatform refuses a single-platform image built for another platform
// than asked: without an index nothing else chooses, and indexing the wrong
// architecture silently would give a filesystem that cannot run. An image
// whose config records no platform is taken as is, and a variant or OS
// version the config leaves out (index descriptors often carry them alone)
// is not asked of it.
func checkPlatform(img v1.Image, platform *v1.Platform) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read image config: %w", err)
	}
	if cf.OS == "" && cf.Architecture == "" {
		return nil
	}
	have := v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant, OSVersion: cf.OSVersion}
	want := v1.Platform{OS: platform.OS, Architecture: platform.Architecture, Variant: platform.Variant, OSVersion: platform.OSVersion}
	if have.Variant == "" {
		want.Variant = ""
	}
	if have.OSVersion == "" {
		want.OSVersion = ""
	}
	if !have.Satisfies(want) {
		return fmt.Errorf("%w %s (has: %s)", ErrNoPlatform, platform, have.String())
	}
	return nil
}
