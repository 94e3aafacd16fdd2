package daemon

import (
	"context"

	"github.com/clipd/clipd/api"
	"golang.org/x/sync/errgroup"
)

// statsCalls bounds the figures calls in flight at once.
const statsCalls = 8

// statsOf asks every mount of all for its figures once, concurrently, all
// under one deadline (statsTimeout): a listing or a scrape takes at most
// that long however many serving processes are wedged. A mount that does
// not answer in time counts with the last figures it gave.
func (s *Server) statsOf(ctx context.Context, all []*entry) []api.MountStats {
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	out := make([]api.MountStats, len(all))
	var g errgroup.Group
	g.SetLimit(statsCalls)
	for i, e := range all {
		g.Go(func() error {
			out[i] = e.m.Stats(ctx)
			return nil
		})
	}
	_ = g.Wait() // the calls return no errors
	return out
}
