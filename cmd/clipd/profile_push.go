package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/profile"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// cmdProfilePush publishes this node's prefetch profile of an image in the
// image's repository, attached to its platform manifest beside the index,
// so that other nodes mounting the image by reference start from it. It
// reads the profile store in the config's state_dir itself, like the
// cache commands read the cache: the daemon plays no part.
func cmdProfilePush(e *env, args []string) error {
	flags := newFlags(e, "profile push", "profile push REF [--platform linux/amd64]\n\n"+
		"Publishes this node's prefetch profile of image REF (daemon.state_dir/profiles of the config)\n"+
		"as an OCI artifact attached to REF's platform manifest, beside its index. Nodes that mount REF\n"+
		"by reference and have no profile of their own fetch the newest one with the index.")
	platformFlag := flags.String("platform", fetcher.DefaultPlatform().String(), "platform to pick from a multi-platform image (OS/ARCH[/VARIANT])")
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return err
	}
	platform, err := v1.ParsePlatform(*platformFlag)
	if err != nil {
		return usageErrorf("--platform %q: %v", *platformFlag, err)
	}
	cfg, err := e.global.loadConfig()
	if err != nil {
		return err
	}
	src := pos[0]
	ref, err := fetcher.ParseReference(src, cfg.Registry.Insecure)
	if err != nil {
		return usageErrorf("profile push: %q: %v (want HOST/REPO:TAG or HOST/REPO@sha256:...)", src, err)
	}
	opts := fetcher.Options{Insecure: cfg.Registry.Insecure}
	if opts.Hosts, err = fetcher.LoadHostsDir(cfg.Registry.ConfigPath); err != nil {
		return fmt.Errorf("registry.config_path: %w", err)
	}
	img, is, err := fetcher.ResolveImage(e.ctx, src, platform, opts)
	if err != nil {
		return refusedOr(ref.Context().RegistryStr(), fmt.Errorf("profile push: resolve %s: %w", src, err))
	}
	subject, err := fetcher.SubjectOf(img)
	if err != nil {
		return fmt.Errorf("profile push %s: %w", src, err)
	}
	manifest := is.Manifest

	// Read, never create: a missing store is "no profile".
	dir := filepath.Join(cfg.Daemon.StateDir, profile.Dir)
	p, err := loadLocalProfile(dir, manifest)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("profile push: no prefetch profile of %s (manifest %s) in %s: mount the image and run its workload on this node first",
			src, manifest, dir)
	}
	if err != nil {
		return fmt.Errorf("profile push %s (manifest %s): %w", src, manifest, err)
	}
	var data bytes.Buffer
	if err := p.Encode(&data); err != nil {
		return err
	}
	repo := ref.Context()
	// The same profile as the newest one published: nothing to add (every
	// push is an artifact of its own, and the listing grows with them).
	if refs, err := fetcher.FindReferrers(e.ctx, repo, subject.Digest, opts); err == nil && len(refs.Profiles) > 0 {
		newest := refs.Profiles[len(refs.Profiles)-1]
		if b, err := fetcher.FetchProfile(e.ctx, repo, newest, opts); err == nil && bytes.Equal(b, data.Bytes()) {
			fmt.Fprintf(e.stdout, "profile of %s (manifest %s) already published: %s@%s\n", src, manifest, repo, newest.Manifest)
			return nil
		}
	}
	h, err := fetcher.PublishProfile(e.ctx, repo, subject, data.Bytes(), p.Recordings, time.Now(), opts)
	if err != nil {
		return refusedOr(repo.RegistryStr(), err)
	}
	fmt.Fprintf(e.stdout, "published profile %s@%s: %s, %d spans over %d layers, %d recordings; attached to %s\n",
		repo, h, humanBytes(int64(data.Len())), p.Spans(), len(p.Layers), p.Recordings, manifest)
	return nil
}

// refusedOr says so when registry refused access (401, 403): the fix is
// credentials, for pushing as well as pulling.
func refusedOr(registry string, err error) error {
	st, _ := fetcher.RegistryStatus(err)
	if st != http.StatusUnauthorized && st != http.StatusForbidden {
		return err
	}
	return fmt.Errorf("registry %s refused access (%d %s): credentials missing, wrong or without push rights (docker login, or DOCKER_CONFIG): %w",
		registry, st, http.StatusText(st), err)
}

// loadLocalProfile reads the profile of manifest from the store in dir
// without creating anything; fs.ErrNotExist when there is none.
func loadLocalProfile(dir, manifest string) (*profile.Profile, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("profile store: %w", err)
	}
	s, err := profile.Open(dir) // exists: Open creates nothing
	if err != nil {
		return nil, err
	}
	return s.Load(manifest)
}
