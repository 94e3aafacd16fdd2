package daemon

import "testing"

func TestOverlayUses(t *testing.T) {
	for _, c := range []struct {
		opts, dir string
		want      bool
	}{
		{"rw,lowerdir=/m/a,upperdir=/u/up,workdir=/u/wk", "/m/a", true},
		{"rw,lowerdir=/x:/m/a/sub,upperdir=/u/up,workdir=/u/wk", "/m/a", true},
		{"rw,lowerdir=/m/ab,upperdir=/u/up,workdir=/u/wk", "/m/a", false},
		{"rw,upperdir=/m/a/up,workdir=/m/a/wk,lowerdir=/l", "/m/a", true},
		{"rw,lowerdir+=/m/a", "/m/a", true},
		{"rw,xino=off", "/m/a", false},
	} {
		if got := overlayUses(c.opts, c.dir); got != c.want {
			t.Errorf("overlayUses(%q, %q) = %v, want %v", c.opts, c.dir, got, c.want)
		}
	}
}

func TestPeerGroup(t *testing.T) {
	if got := peerGroup([]string{"master:3", "shared:7"}, "shared:"); got != "7" {
		t.Errorf("shared peer group: %q, want 7", got)
	}
	if got := peerGroup([]string{"master:3"}, "master:"); got != "3" {
		t.Errorf("master peer group: %q, want 3", got)
	}
	if got := peerGroup(nil, "shared:"); got != "" {
		t.Errorf("private mount: %q, want none", got)
	}
}
