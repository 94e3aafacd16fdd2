package daemon

import (
	"errors"
	"io/fs"
	"net/http"
	"path/filepath"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/profile"
)

// The prefetch profiles of the node (package profile), which serving
// processes record and replay in daemon.state_dir/profiles: the daemon only
// lists, shows and removes them.

func (s *Server) profileStore() (*profile.Store, error) {
	return profile.Open(filepath.Join(s.config().Daemon.StateDir, profile.Dir))
}

// profileImage reads and checks the {image} of a profile call.
func profileImage(r *http.Request) (string, error) {
	image := r.PathValue("image")
	if !profile.ValidImage(image) {
		return "", badRequest("profile %q: the image must be a digest, sha256:<64 hex digits>", image)
	}
	return image, nil
}

func profileNotFound(image string) error {
	return apiErr(http.StatusNotFound, api.CodeProfileNotFound, "no prefetch profile for %s", image)
}

func (s *Server) listProfiles(w http.ResponseWriter, r *http.Request) error {
	st, err := s.profileStore()
	if err != nil {
		return err
	}
	list, err := st.List()
	if err != nil {
		return err
	}
	out := make([]api.ProfileSummary, 0, len(list))
	for _, p := range list {
		out = append(out, api.ProfileSummary{Image: p.Image, Layers: p.Layers, Spans: p.Spans, Recordings: p.Recordings,
			Updated: p.Updated.UTC(), Size: p.Size, Error: p.Err})
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getProfile(w http.ResponseWriter, r *http.Request) error {
	image, err := profileImage(r)
	if err != nil {
		return err
	}
	st, err := s.profileStore()
	if err != nil {
		return err
	}
	p, err := st.Load(image)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return profileNotFound(image)
	case err != nil:
		// Stored but unusable (malformed, foreign, unreadable): say why,
		// as clipd profile ls does.
		return apiErr(http.StatusUnprocessableEntity, api.CodeBadProfile, "%v", err)
	}
	api.WriteJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) deleteProfile(w http.ResponseWriter, r *http.Request) error {
	image, err := profileImage(r)
	if err != nil {
		return err
	}
	st, err := s.profileStore()
	if err != nil {
		return err
	}
	if err := st.Remove(image); errors.Is(err, fs.ErrNotExist) {
		return profileNotFound(image)
	} else if err != nil {
		return err
	}
	s.log.Info("prefetch profile removed", "image", image)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
