package bench

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstream serves a blob of n bytes under a registry-like blob path and a
// small manifest elsewhere.
func upstream(t *testing.T, n int) string {
	t.Helper()
	blob := bytes.Repeat([]byte("x"), n)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
			return
		}
		io.WriteString(w, `{"manifest":true}`)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func startShaper(t *testing.T, up string, p Profile) *Shaper {
	t.Helper()
	s, err := StartShaper(up)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetProfile(p)
	return s
}

func get(t *testing.T, c *http.Client, url, rng string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return int(n)
}

// TestShaperDelaysAndCaps checks lower bounds only (a loaded machine can
// only make things slower): a new connection costs the handshake RTT plus
// the request RTT, a reused one the request RTT, and a body cannot arrive
// faster than the bandwidth allows.
func TestShaperDelaysAndCaps(t *testing.T) {
	const size = 1 << 20
	p := Profile{Name: "test", RTT: 40 * time.Millisecond, Bandwidth: 40_000_000} // 5 MB/s
	s := startShaper(t, upstream(t, size), p)
	c := &http.Client{Transport: &http.Transport{}}
	base := "http://" + s.Addr + "/v2/repo/blobs/sha256:aa"

	start := time.Now()
	if n := get(t, c, "http://"+s.Addr+"/v2/repo/manifests/tag", ""); n == 0 {
		t.Fatal("empty manifest")
	}
	if el := time.Since(start); el < 2*p.RTT {
		t.Errorf("first request on a new connection took %s, want >= 2 RTT = %s", el, 2*p.RTT)
	}

	start = time.Now()
	if n := get(t, c, base, ""); n != size {
		t.Fatalf("got %d bytes, want %d", n, size)
	}
	want := p.RTT + p.Transfer(size) - max(p.Transfer(burstBytes), minBurst)
	if el := time.Since(start); el < want {
		t.Errorf("1 MiB on a reused connection took %s, want >= RTT + size/bandwidth = %s", el, want)
	}

	start = time.Now()
	if n := get(t, c, base, "bytes=0-99"); n != 100 {
		t.Fatalf("range read got %d bytes, want 100", n)
	}
	if el := time.Since(start); el < p.RTT {
		t.Errorf("a small range read took %s, want >= RTT = %s", el, p.RTT)
	}

	got := s.Counts()
	wantCounts := Counts{Requests: 3, Bytes: size + 100 + int64(len(`{"manifest":true}`)), BlobBytes: size + 100, Conns: 1}
	if got != wantCounts {
		t.Errorf("counts %+v, want %+v", got, wantCounts)
	}
	s.Reset()
	if got := s.Counts(); got != (Counts{}) {
		t.Errorf("counts after Reset %+v, want zero", got)
	}
}

// TestShaperSharesBandwidth checks that parallel connections share one
// link: four concurrent 256 KiB reads take at least as long as 1 MiB.
func TestShaperSharesBandwidth(t *testing.T) {
	const size = 256 << 10
	p := Profile{Name: "test", RTT: time.Millisecond, Bandwidth: 40_000_000}
	s := startShaper(t, upstream(t, size), p)
	url := "http://" + s.Addr + "/v2/repo/blobs/sha256:bb"
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			c := &http.Client{Transport: &http.Transport{}}
			get(t, c, url, "")
		})
	}
	wg.Wait()
	want := p.Transfer(4*size) - max(p.Transfer(burstBytes), minBurst)
	if el := time.Since(start); el < want {
		t.Errorf("4 parallel reads of 256 KiB took %s, want >= %s (one shared link)", el, want)
	}
	if c := s.Counts(); c.Conns != 4 || c.BlobBytes != 4*size {
		t.Errorf("counts %+v, want 4 connections and %d blob bytes", c, 4*size)
	}
}

// TestShaperResetClosesConnections checks that a client must reconnect
// (and pay the handshake again) after Reset.
func TestShaperResetClosesConnections(t *testing.T) {
	p := Profile{Name: "test", RTT: 30 * time.Millisecond}
	s := startShaper(t, upstream(t, 10), p)
	c := &http.Client{Transport: &http.Transport{}}
	url := "http://" + s.Addr + "/v2/repo/blobs/sha256:cc"
	get(t, c, url, "")
	s.Reset()
	time.Sleep(10 * time.Millisecond) // let the client see the close
	get(t, c, url, "")
	if n := s.Counts().Conns; n != 1 {
		t.Errorf("connections after Reset: %d, want 1 (a new one)", n)
	}
}
