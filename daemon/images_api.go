package daemon

import (
	"net/http"
	"path/filepath"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/indexstore"
)

// pullImage stages an image's index in the store without mounting it
// (clipd pull).
func (s *Server) pullImage(w http.ResponseWriter, r *http.Request) error {
	var req api.PullImage
	if err := api.DecodeBody(w, r, maxBody, &req); err != nil {
		return err
	}
	if req.Image == "" {
		return badRequest(`missing field "image"`)
	}
	cm := api.CreateMount{Image: req.Image, Platform: req.Platform, Auth: req.Auth}
	creds, err := requestCredentials(r, cm)
	if err != nil {
		return err
	}
	im, err := s.stageImage(r.Context(), cm, creds)
	if err != nil {
		return err
	}
	defer im.file.Close()
	fi, err := im.file.Stat()
	if err != nil {
		return err
	}
	s.log.Info("image pulled", "image", im.ref, "manifest", im.manifest, "index_source", im.source, "size", fi.Size())
	api.WriteJSON(w, http.StatusOK, api.StoredIndex{ManifestDigest: im.manifest, Image: im.ref, IndexSource: im.source,
		Size: fi.Size(), Used: fi.ModTime().UTC(), Mounts: s.indexUsers()[im.path]})
	return nil
}

// indexUsers maps archive paths to the mounts serving them.
func (s *Server) indexUsers() map[string][]string {
	users := map[string][]string{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.sorted() {
		users[e.Archive] = append(users[e.Archive], e.ID)
	}
	return users
}

func (s *Server) indexStore() *indexstore.Store {
	return indexstore.OpenReadOnly(filepath.Join(s.config().Daemon.StateDir, indexstore.Dir))
}

func storedIndex(e indexstore.Entry, users map[string][]string) api.StoredIndex {
	m := users[e.Path]
	if m == nil {
		m = []string{}
	}
	return api.StoredIndex{ManifestDigest: e.Digest, Image: e.Meta.Image, IndexSource: e.Meta.Source, Size: e.Size,
		Used: e.Used.UTC(), Mounts: m}
}

// listImages lists the index store with the mounts using each index.
func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	list, err := s.indexStore().List()
	if err != nil {
		return err
	}
	users := s.indexUsers()
	out := make([]api.StoredIndex, 0, len(list))
	for _, e := range list {
		out = append(out, storedIndex(e, users))
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// pruneImages removes every index no mount uses; it answers what it
// removed.
func (s *Server) pruneImages(w http.ResponseWriter, r *http.Request) error {
	users := s.indexUsers()
	removed, err := s.indexStore().Prune(-1, func(e indexstore.Entry) bool { return len(users[e.Path]) > 0 })
	if err != nil {
		return err
	}
	out := make([]api.StoredIndex, 0, len(removed))
	for _, e := range removed {
		out = append(out, storedIndex(e, users))
	}
	s.log.Info("index store pruned", "removed", len(out))
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}
