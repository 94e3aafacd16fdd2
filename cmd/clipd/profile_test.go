package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/mounter"
	"github.com/clipd/clipd/profile"
)

// clipd profile ls, show and rm against a daemon whose serving processes
// record: the profile of a mount that read a file appears at its unmount;
// show takes the digest or the mountpoint of a live mount of the image.
func TestProfileCommands(t *testing.T) {
	clip := filepath.Join(t.TempDir(), "img.clip")
	if code, _, errs := clipd(t, "index", "oci-layout:"+ociLayout(t)+":v1", "-o", clip); code != 0 {
		t.Fatalf("index: %s", errs)
	}
	a, err := index.Open(clip)
	if err != nil {
		t.Fatal(err)
	}
	key := a.Source.Manifest
	if !profile.ValidImage(key) {
		t.Fatalf("the layout's index names no manifest digest: %q", key)
	}
	dir, cfg := startCLIDaemon(t, "test", func(sc *mounter.SpawnConfig) {
		sc.Profiles, sc.RecordFor, sc.Replay = filepath.Join(sc.StateDir, profile.Dir), time.Minute, true
	})
	sock := "--socket=" + cfg.Daemon.Socket

	if code, out, _ := clipd(t, "profile", sock, "ls"); code != 0 || !strings.HasPrefix(out, "IMAGE ") || strings.Count(out, "\n") != 1 {
		t.Errorf("profile ls of an empty store: %d %q", code, out)
	}
	mp := filepath.Join(dir, "mnt", "one")
	code, out, errs := clipd(t, sock, "mount", clip, mp)
	if code != 0 {
		t.Fatalf("mount: %s", errs)
	}
	id := strings.TrimSpace(out)
	if got, err := os.ReadFile(filepath.Join(mp, "etc/motd")); err != nil || string(got) != "welcome\n" {
		t.Fatalf("read through the mount: %q %v", got, err)
	}
	// No profile yet: the window is a minute, and the mount is live.
	if code, _, errs := clipd(t, sock, "profile", "show", mp); code != exitNotFound || !strings.Contains(errs, "no prefetch profile for "+key) {
		t.Errorf("profile show before the recording ends: %d %q", code, errs)
	}
	if code, _, errs := clipd(t, sock, "umount", id); code != 0 {
		t.Fatalf("umount: %s", errs)
	}

	var list []api.ProfileSummary
	code, out, _ = clipd(t, sock, "profile", "ls", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Image != key || list[0].Spans != 1 || list[0].Recordings != 1 {
		t.Fatalf("profile ls --json after the unmount: %d %s", code, out)
	}
	if code, out, _ := clipd(t, sock, "profile", "ls"); code != 0 || !strings.Contains(out, key) {
		t.Errorf("profile ls: %d %q", code, out)
	}
	var p profile.Profile
	if code, out, _ := clipd(t, "profile", "show", key, sock); code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.Image != key || p.Spans() != 1 {
		t.Errorf("profile show %s: %d %s", key, code, out)
	}
	if code, _, errs := clipd(t, sock, "profile", "show", "nope"); code != exitUsage || !strings.Contains(errs, "neither a digest") {
		t.Errorf("profile show of an unknown name: %d %q", code, errs)
	}
	if code, out, _ := clipd(t, sock, "profile", "rm", key); code != 0 || !strings.Contains(out, key) {
		t.Errorf("profile rm: %d %q", code, out)
	}
	if code, _, errs := clipd(t, sock, "profile", "rm", key); code != exitNotFound {
		t.Errorf("profile rm twice: %d %q", code, errs)
	}
	if code, _, errs := clipd(t, sock, "profile", "frob"); code != exitUsage || !strings.Contains(errs, `unknown subcommand "frob"`) {
		t.Errorf("unknown subcommand: %d %q", code, errs)
	}
	if code, out, _ := clipd(t, "profile", "--help"); code != 0 || !strings.Contains(out, "clipd profile ls") {
		t.Errorf("profile --help: %d %q", code, out)
	}
}
