package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// registry.config_path must be an absolute directory whose hosts.toml
// files parse; the error names the key and the file.
func TestConfigRegistryConfigPath(t *testing.T) {
	good := t.TempDir()
	os.MkdirAll(filepath.Join(good, "registry.local:5000"), 0o755)
	os.WriteFile(filepath.Join(good, "registry.local:5000", "hosts.toml"), []byte(`[host."http://cache:5000"]`+"\n"), 0o644)
	bad := t.TempDir()
	os.MkdirAll(filepath.Join(bad, "docker.io"), 0o755)
	os.WriteFile(filepath.Join(bad, "docker.io", "hosts.toml"), []byte(`[host."ftp://cache"]`+"\n"), 0o644)
	for _, c := range []struct {
		path string
		want []string // empty: accepted
	}{
		{good, nil},
		{"certs.d", []string{"registry.config_path", "certs.d"}},
		{filepath.Join(good, "missing"), []string{"registry.config_path", "missing"}},
		{bad, []string{"registry.config_path", "docker.io", "ftp"}},
	} {
		p := filepath.Join(t.TempDir(), "config.toml")
		os.WriteFile(p, []byte("[registry]\nconfig_path = \""+c.path+"\"\n"), 0o644)
		cfg, err := LoadConfig(p)
		if c.want == nil {
			if err != nil || cfg.Registry.ConfigPath != c.path {
				t.Errorf("%s: %v", c.path, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s accepted", c.path)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", c.path, err, w)
			}
		}
	}
}
