package fetcher

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Credentials are the registry credentials of one mount request, as
// Docker's engine API carries them (X-Registry-Auth): a user name and
// password, or an identity token. They are kept in memory only; String and
// the JSON encoding of error values never show them.
type Credentials struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// Empty reports whether c carries no credentials.
func (c Credentials) Empty() bool {
	return c.Username == "" && c.Password == "" && c.IdentityToken == ""
}

// String hides the secret: credentials end up in %v of structs by accident.
func (c Credentials) String() string {
	if c.Empty() {
		return "no credentials"
	}
	if c.Username != "" {
		return "credentials of " + c.Username
	}
	return "an identity token"
}

// GoString hides the secret from %#v as well.
func (c Credentials) GoString() string { return c.String() }

// Keychain returns a keychain that answers every registry with c; empty
// credentials give the daemon-wide keychain (docker config.json and
// credential helpers).
func (c Credentials) Keychain() authn.Keychain {
	if c.Empty() {
		return authn.DefaultKeychain
	}
	return staticKeychain{authn.FromConfig(authn.AuthConfig{
		Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken,
	})}
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

// ParseRegistryAuth decodes an X-Registry-Auth header: base64url (padded or
// not, standard alphabet accepted too) JSON with "username" and "password"
// or "identitytoken". Errors never quote the header.
func ParseRegistryAuth(h string) (Credentials, error) {
	h = strings.TrimSpace(h)
	var b []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.RawURLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err = enc.DecodeString(h); err == nil {
			break
		}
	}
	if err != nil {
		return Credentials{}, errors.New("X-Registry-Auth is not base64url")
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return Credentials{}, errors.New("X-Registry-Auth is not a JSON object of username, password or identitytoken")
	}
	return c, nil
}

// RegistryStatus tells what a registry error means for a client: the HTTP
// status of the registry's answer (401, 403, 404...), or 0 when the error
// did not come from a registry answer. Unreachable reports a connection
// failure (refused, DNS, timeout).
func RegistryStatus(err error) (status int, unreachable bool) {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode, false
	}
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) || errors.As(err, &de) || (errors.As(err, &ne) && ne.Timeout()) {
		return 0, true
	}
	return 0, false
}

// IsNotFound reports a registry answer that the manifest, repository or
// tag does not exist.
func IsNotFound(err error) bool {
	s, _ := RegistryStatus(err)
	if s == http.StatusNotFound {
		return true
	}
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
				return true
			}
		}
	}
	return false
}

// describeRegistryErr is a one-line cause for logs and answers: the
// registry's status and error codes, without its body.
func describeRegistryErr(err error) string {
	var te *transport.Error
	if errors.As(err, &te) {
		codes := make([]string, 0, len(te.Errors))
		for _, d := range te.Errors {
			codes = append(codes, string(d.Code))
		}
		if len(codes) > 0 {
			return fmt.Sprintf("%d %s (%s)", te.StatusCode, http.StatusText(te.StatusCode), strings.Join(codes, ", "))
		}
		return fmt.Sprintf("%d %s", te.StatusCode, http.StatusText(te.StatusCode))
	}
	return err.Error()
}
