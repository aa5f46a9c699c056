package caddynix

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, caddyfile string) (string, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, _, err := adapter.Adapt([]byte(caddyfile), nil)
	return string(out), err
}

func TestCaddyfileErrors(t *testing.T) {
	tests := map[string]string{
		"unknown option":  "nix_cache {\n\tflavour vanilla\n}",
		"duplicate root":  "nix_cache {\n\troot a\n\troot b\n}",
		"missing value":   "nix_cache {\n\troot\n}",
		"two values":      "nix_cache {\n\troot a b\n}",
		"bad priority":    "nix_cache {\n\tpriority high\n}",
		"bad mass query":  "nix_cache {\n\twant_mass_query maybe\n}",
		"inline argument": "nix_cache somewhere",
		"other storage":   "nix_cache {\n\tstorage gcs {\n\t\tbucket b\n\t}\n}",
		"store no dir":    "nix_cache {\n\tstore\n}",
		"upstream no url": "nix_cache {\n\tupstream\n}",
		"upstream no key": "nix_cache {\n\tupstream https://cache.nixos.org\n}",
		"upstream option": "nix_cache {\n\tupstream https://cache.nixos.org {\n\t\ttrusted_public_key k\n\t\tpriority 1\n\t}\n}",
		"upstream time":   "nix_cache {\n\tupstream https://cache.nixos.org {\n\t\ttrusted_public_key k\n\t\ttimeout soon\n\t}\n}",
		"store two dirs":  "nix_cache {\n\tstore /nix/store /other\n}",
		"token tier":      "nix_cache {\n\tupload {\n\t\ttoken abcdefghijklmnopqrst branch\n\t}\n}",
		"token no value":  "nix_cache {\n\tupload {\n\t\ttoken_file\n\t}\n}",
		"no trusted refs": "nix_cache {\n\tupload {\n\t\ttrusted_refs\n\t}\n}",
		"overlay age":     "nix_cache {\n\tretention {\n\t\toverlay_max_age 0s\n\t}\n}",
		"store xz":        "nix_cache {\n\tstore /nix/store {\n\t\tcompression xz\n\t}\n}",
		"store option":    "nix_cache {\n\tstore /nix/store {\n\t\tupstream x\n\t}\n}",
		"store twice":     "nix_cache {\n\tstore /nix/store {\n\t\tdatabase a\n\t\tdatabase b\n\t}\n}",
		"s3 no bucket":    "nix_cache {\n\tstorage s3 {\n\t\tendpoint http://127.0.0.1:1\n\t}\n}",
		"s3 bad option":   "nix_cache {\n\tstorage s3 {\n\t\tbucket b\n\t\tendpoint http://127.0.0.1:1\n\t\tacl public\n\t}\n}",
		"s3 small parts":  "nix_cache {\n\tstorage s3 {\n\t\tbucket b\n\t\tendpoint http://127.0.0.1:1\n\t\tpart_size lots\n\t}\n}",
		"s3 no grace":     "nix_cache {\n\tstorage s3 {\n\t\tbucket b\n\t\tendpoint http://127.0.0.1:1\n\t\tgc_grace 0s\n\t}\n}",
		"negative min":    "nix_cache {\n\tretention {\n\t\tmin_age -1h\n\t}\n}",
		"zero max age":    "nix_cache {\n\tretention {\n\t\tmax_age 0s\n\t}\n}",
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			if out, err := adapt(t, ":8080 {\n"+body+"\n}"); err == nil {
				t.Fatalf("adapting %q succeeded: %s", body, out)
			} else if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %q does not say where in the Caddyfile", err)
			}
		})
	}
}

func TestStorageNeedsOnePlace(t *testing.T) {
	s3 := &StorageConfig{S3: &S3Config{Bucket: "b", Endpoint: "http://127.0.0.1:1", AccessKeyID: "id", SecretAccessKey: "s3cr3t-value"}}
	for name, tc := range map[string]struct {
		root    string
		storage *StorageConfig
		want    string
	}{
		"neither":     {"", nil, "root is required"},
		"both":        {"cache", s3, "keep one"},
		"two secrets": {"", &StorageConfig{S3: &S3Config{Bucket: "b", Endpoint: "http://x", SecretAccessKey: "a", SecretAccessKeyFile: "f"}}, "not both"},
		"long grace":  {"", &StorageConfig{S3: &S3Config{Bucket: "b", Endpoint: "http://x", GCGrace: caddy.Duration(time.Hour)}}, "would lose its lease"},
		"secret file": {"", &StorageConfig{S3: &S3Config{Bucket: "b", Endpoint: "http://x", SecretAccessKeyFile: "/nonexistent/secret"}}, "/nonexistent/secret"},
		"unreachable": {"", s3, "reaching bucket b at http://127.0.0.1:1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := openStore(t.Context(), caddy.NewReplacer(), tc.root, tc.storage, false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("openStore = %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t-value") {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}

func TestParseS3URL(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "id")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	cfg, err := parseS3URL("s3://nix-cache/main/?endpoint=https://s3.example.org&region=eu-1&addressing-style=path&gc-grace=2m")
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.S3; c.Bucket != "nix-cache" || c.Prefix != "main/" || c.Endpoint != "https://s3.example.org" || c.Region != "eu-1" || !c.PathStyle || c.AccessKeyID != "id" || c.SecretAccessKey != "secret" || cfg.gcGrace() != 2*time.Minute {
		t.Fatalf("parsed %+v", *c)
	}
	for _, bad := range []string{"https://s3.example.org/b", "s3://b", "s3:///?endpoint=http://x", "s3://b?endpoint=http://x&gc-grace=soon"} {
		if _, err := parseS3URL(bad); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	if _, err := parseS3URL("s3://b?endpoint=http://x"); err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("missing credentials: %v", err)
	}
}

// TestRetentionMinAgeZero: min_age 0s, as `gc --min-age 0s` takes it,
// protects nothing by age, where leaving min_age out protects an hour.
func TestRetentionMinAgeZero(t *testing.T) {
	out, err := adapt(t, ":8080 {\n\tnix_cache {\n\t\troot cache\n\t\tretention {\n\t\t\tmax_size 1GiB\n\t\t\tmin_age 0s\n\t\t}\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"min_age":0`) {
		t.Fatalf("min_age 0s did not reach the config: %s", out)
	}
	zero := caddy.Duration(0)
	for _, tc := range []struct {
		minAge *caddy.Duration
		want   time.Duration
	}{{nil, time.Hour}, {&zero, 0}} {
		r := &RetentionConfig{MaxSize: 1 << 30, MinAge: tc.minAge}
		r.setDefaults()
		if err := r.validate(); err != nil {
			t.Fatalf("min_age %v: %v", tc.minAge, err)
		}
		if got := r.policy().MinAge; got != tc.want {
			t.Errorf("min_age %v: the policy protects %s, want %s", tc.minAge, got, tc.want)
		}
	}
}
