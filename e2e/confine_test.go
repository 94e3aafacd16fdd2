package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMountpointSymlinkRace: whoever can write in a mount root swaps the
// mountpoint (or its parent) for a symbolic link to outside the roots,
// with renameat2(RENAME_EXCHANGE) in a loop, while mount requests run.
// No mount and no directory may appear outside the roots, and every mount
// under the roots must be one the API lists.
func TestMountpointSymlinkRace(t *testing.T) {
	requireE2ETools(t)
	d, archive := layoutFixture(t)

	outside := filepath.Join(t.TempDir(), "outside")
	bait := filepath.Join(outside, "bait") // an empty directory a followed link would mount on
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(bait, 0o755))
	t.Cleanup(func() {
		for _, m := range readMountinfo(t) {
			if strings.HasPrefix(m.mountpoint, outside+"/") {
				_ = unix.Unmount(m.mountpoint, unix.MNT_DETACH)
			}
		}
	})
	root := d.mountRoot
	leafDir, leafLink := filepath.Join(root, "a", "leaf"), filepath.Join(root, "a", "alt")
	parentDir, parentLink := filepath.Join(root, "p"), filepath.Join(root, "q")
	must(os.MkdirAll(leafDir, 0o755))
	must(os.Symlink(bait, leafLink))
	must(os.MkdirAll(parentDir, 0o755))
	must(os.Symlink(outside, parentLink))

	// The attacker: both pairs swapped as fast as the kernel allows (a
	// swap fails with EBUSY while the directory is a mount point).
	stop := make(chan struct{})
	var swaps atomic.Int64
	var swapWG sync.WaitGroup
	for _, pair := range [][2]string{{leafDir, leafLink}, {parentDir, parentLink}} {
		swapWG.Add(1)
		go func() {
			defer swapWG.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if unix.Renameat2(unix.AT_FDCWD, pair[0], unix.AT_FDCWD, pair[1], unix.RENAME_EXCHANGE) == nil {
					swaps.Add(1)
				}
			}
		}()
	}

	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		escaped  []string
	)
	// outsideMounts lists mounts under outside; checked after every
	// created mount, before it is unmounted again.
	outsideMounts := func() []string {
		var out []string
		for _, m := range readMountinfo(t) {
			if strings.HasPrefix(m.mountpoint, outside+"/") || m.mountpoint == outside {
				out = append(out, m.mountpoint+" ("+m.fstype+")")
			}
		}
		return out
	}
	post := func(mp string) (int, string) {
		body, _ := json.Marshal(map[string]string{"archive": archive, "mountpoint": mp})
		status, resp, err := d.request(http.MethodPost, "/v1/mounts", body)
		if err != nil {
			t.Errorf("POST %s: %v", mp, err)
			return 0, ""
		}
		var mi struct {
			ID         string `json:"id"`
			Mountpoint string `json:"mountpoint"`
		}
		_ = json.Unmarshal(resp, &mi)
		mu.Lock()
		statuses[status]++
		if status != http.StatusCreated && statuses[status] == 1 {
			t.Logf("POST %s: %d %s", mp, status, resp)
		}
		mu.Unlock()
		if status == http.StatusCreated {
			if !strings.HasPrefix(mi.Mountpoint, root+"/") {
				t.Errorf("mount %s reported at %s, outside the root", mi.ID, mi.Mountpoint)
			}
			if out := outsideMounts(); len(out) > 0 {
				mu.Lock()
				escaped = append(escaped, out...)
				mu.Unlock()
			}
		}
		return status, mi.ID
	}
	const perKind = 150
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 2*perKind; i += 4 {
				var mp string
				keep := false
				if i%2 == 0 {
					mp = leafDir // an existing leaf, swapped
				} else {
					mp = filepath.Join(parentDir, fmt.Sprintf("n%d", i)) // created below a swapped parent
					keep = i%10 == 1                                     // a few stay mounted until the end
				}
				status, id := post(mp)
				if status == http.StatusCreated && !keep {
					if st, b, err := d.request(http.MethodDelete, "/v1/mounts/"+id+"?force=true", nil); err != nil || st != http.StatusOK {
						t.Errorf("DELETE %s: %d %s %v", id, st, b, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	swapWG.Wait()
	t.Logf("%d swaps; answers by status: %v", swaps.Load(), statuses)
	if swaps.Load() == 0 {
		t.Fatal("the attacker never swapped anything")
	}
	if statuses[http.StatusCreated] == 0 {
		t.Errorf("no request succeeded: the race was not exercised")
	}
	// A swap is the client's doing: 400 (a link met on the way), 403 (the
	// path resolved outside the roots) or 409 (the directory moved under
	// the mount), never a server error.
	for st, n := range statuses {
		if st != http.StatusCreated && st != http.StatusBadRequest && st != http.StatusForbidden && st != http.StatusConflict {
			t.Errorf("%d answers with status %d", n, st)
		}
	}
	if len(escaped) > 0 {
		t.Errorf("mounts outside the roots: %s", strings.Join(slices.Compact(escaped), ", "))
	}
	if out := outsideMounts(); len(out) > 0 {
		t.Errorf("mounts outside the roots at the end: %s", strings.Join(out, ", "))
	}
	ents, err := os.ReadDir(outside)
	must(err)
	for _, e := range ents {
		if e.Name() != "bait" {
			t.Errorf("created outside the roots: %s", filepath.Join(outside, e.Name()))
		}
	}
	if ents, _ := os.ReadDir(bait); len(ents) > 0 {
		t.Errorf("created outside the roots: %d entries in %s", len(ents), bait)
	}

	// Back to the layout the API paths name, then compare: nothing under
	// the root may be mounted without the API knowing.
	for _, pair := range [][2]string{{leafDir, leafLink}, {parentDir, parentLink}} {
		if fi, err := os.Lstat(pair[0]); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			must(unix.Renameat2(unix.AT_FDCWD, pair[0], unix.AT_FDCWD, pair[1], unix.RENAME_EXCHANGE))
		}
	}
	listed := map[string]string{}
	for id, m := range listMounts(t, d) {
		listed[m.Mountpoint] = id
	}
	var onDisk []string
	for _, m := range readMountinfo(t) {
		if strings.HasPrefix(m.mountpoint, root+"/") {
			onDisk = append(onDisk, m.mountpoint)
			if _, ok := listed[m.mountpoint]; !ok {
				t.Errorf("%s (%s %s) is mounted but not listed by the API", m.mountpoint, m.fstype, m.source)
			}
		}
	}
	for mp, id := range listed {
		if !slices.Contains(onDisk, mp) {
			t.Errorf("the API lists %s at %s, which is not mounted", id, mp)
		}
	}
	for _, id := range listed {
		if st, b, err := d.request(http.MethodDelete, "/v1/mounts/"+id, nil); err != nil || st != http.StatusOK {
			t.Errorf("DELETE %s: %d %s %v", id, st, b, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(clipdMounts(t, root)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if left := clipdMounts(t, root); len(left) > 0 {
		t.Errorf("still mounted after deleting every listed mount: %v", left)
	}
}
