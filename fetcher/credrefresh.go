package fetcher

import (
	"context"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// DefaultCredentialTTL is how long credentials resolved from the keychain
// are reused before it is asked again.
const DefaultCredentialTTL = time.Minute

// freshAuth asks the keychain again for a registry's credentials when the
// ones it resolved are older than ttl. go-containerregistry's transports
// keep the Authenticator they were made with for their whole life, and
// the default keychain runs a docker credential helper when it resolves,
// not when the credentials are used: without this a mount living longer
// than a helper's credentials (cloud registries hand out hours) would
// present expired ones at its next token refresh. The bearer transport
// asks for credentials only when it exchanges a token (first use, and on a
// 401 once the token expired), so a helper runs about once per token; a
// registry speaking basic auth asks on every request, which the ttl keeps
// from running a helper each time.
type freshAuth struct {
	kc  authn.Keychain
	res authn.Resource
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	auth authn.Authenticator
	at   time.Time
}

func newFreshAuth(kc authn.Keychain, res authn.Resource, ttl time.Duration) (*freshAuth, error) {
	a := &freshAuth{kc: kc, res: res, ttl: ttl, now: time.Now}
	if _, err := a.current(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *freshAuth) current() (authn.Authenticator, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.auth != nil && a.now().Sub(a.at) < a.ttl {
		return a.auth, nil
	}
	auth, err := a.kc.Resolve(a.res)
	if err != nil {
		if a.auth != nil {
			// A helper failing for a moment keeps the last credentials:
			// the registry tells whether they still work.
			return a.auth, nil
		}
		return nil, err
	}
	a.auth, a.at = auth, a.now()
	return auth, nil
}

func (a *freshAuth) Authorization() (*authn.AuthConfig, error) {
	return a.AuthorizationContext(context.Background())
}

// AuthorizationContext lets authn.Authorization pass the request's
// context to authenticators that take one.
func (a *freshAuth) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	auth, err := a.current()
	if err != nil {
		return nil, err
	}
	return authn.Authorization(ctx, auth)
}
