package caddyrunner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	builtA = "/nix/store/y786g8gwq7fjmgzf3rbkrds7kd8qni7j-a"
	builtB = "/nix/store/mza68h0fq76caa56y5p6063kywzbf5hh-b"
)

// testAutoPush is a host job's automatic push, whose credential stored
// the paths stored.
func testAutoPush(t *testing.T, stored ...string) *autoPush {
	t.Helper()
	p, err := prepareAutoPush(t.TempDir(), false, "", autoPushOn, "https://cache.example.org", "https://cache.example.org/upload", "token", func() ([]string, int64) { return stored, 1024 })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeJobFile(t *testing.T, p *autoPush, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(p.hostDir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAutoPushScriptsPointIntoTheJob(t *testing.T) {
	host := testAutoPush(t)
	if want := "!include " + host.hostDir + "/nix.conf\n"; host.nixConfig() != want {
		t.Fatalf("a host job's NIX_CONFIG line %q, want %q", host.nixConfig(), want)
	}
	for _, name := range []string{autoPushHookFile, autoPushScriptFile, autoPushNixConfFile} {
		data, err := os.ReadFile(filepath.Join(host.hostDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), host.hostDir) || strings.Contains(string(data), "DIR") || strings.Contains(string(data), "REQUIRED") {
			t.Fatalf("%s is not written for the job's directory:\n%s", name, data)
		}
	}
	if !strings.Contains(host.step().Run, host.hostDir+"/"+autoPushScriptFile) {
		t.Fatalf("a host job's last step runs %q", host.step().Run)
	}

	// A container job without an auto-push agent (a caddy that is not
	// statically linked) runs the hook, in the directory mounted into the
	// container.
	hooked, err := prepareAutoPush(t.TempDir(), true, "", autoPushOn, "https://cache.example.org", "https://cache.example.org/upload", "token", nil)
	if err != nil {
		t.Fatal(err)
	}
	if hooked.nixConfig() != "!include "+jobAutoPushDir+"/nix.conf\n" || !strings.Contains(hooked.step().Run, jobAutoPushDir) {
		t.Fatalf("a container job running the hook gets NIX_CONFIG %q and the last step %q", hooked.nixConfig(), hooked.step().Run)
	}
	if data, err := os.ReadFile(filepath.Join(hooked.hostDir, autoPushHookFile)); err != nil || !strings.Contains(string(data), jobAutoPushDir) {
		t.Fatalf("the container job's hook is not written for its directory: %v\n%s", err, data)
	}
	if fi, err := os.Stat(hooked.hostDir); err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("a container job's auto-push directory is %v (%v), want writable by the job's user", fi.Mode(), err)
	}

	// A container job's store is watched by the agent: Nix runs no hook,
	// and the directory, empty, only marks the job's container.
	p, err := prepareAutoPush(t.TempDir(), true, "/work/agent/caddy", autoPushOn, "https://cache.example.org", "https://cache.example.org/upload", "token", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.nixConfig() != "" {
		t.Fatalf("a container job, whose store is watched, gets NIX_CONFIG %q", p.nixConfig())
	}
	if entries, err := os.ReadDir(p.hostDir); err != nil || len(entries) != 0 {
		t.Fatalf("a container job's auto-push directory holds %v (%v), want nothing", entries, err)
	}
}

func TestAutoPushInAHostDirectoryWithASpace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "job files")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p, err := prepareAutoPush(dir, false, "", autoPushOn, "http://cache.test", "http://cache.test/upload", "token", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "post-build-hook = " + p.hostDir + "/post-build-hook\n"; p.nixConfig() != want {
		t.Fatalf("NIX_CONFIG line %q, want %q", p.nixConfig(), want)
	}
}

func TestAutoPushOutcome(t *testing.T) {
	t.Run("nothing built", func(t *testing.T) {
		if o, err := testAutoPush(t).outcome(); o != nil || err != nil {
			t.Fatalf("a job that built nothing has outcome %+v, %v", o, err)
		}
	})
	t.Run("pushed and skipped", func(t *testing.T) {
		p := testAutoPush(t, builtA)
		writeJobFile(t, p, autoPushPathsFile, builtA+"\n"+builtB+"\nnot a store path\n")
		writeJobFile(t, p, autoPushResultFile, "0\n")
		o, err := p.outcome()
		if err != nil {
			t.Fatal(err)
		}
		got := o.summary(p.cacheURL)
		for _, want := range []string{"2 built paths", "pushed 1 paths (1.0 KiB of NAR)", builtA, "1 skipped, the cache had them"} {
			if !strings.Contains(got, want) {
				t.Fatalf("summary %q lacks %q", got, want)
			}
		}
		if strings.Contains(got, "NOT PUSHED") {
			t.Fatalf("summary %q reports a failure", got)
		}
	})
	t.Run("nix copy failed", func(t *testing.T) {
		p := testAutoPush(t)
		writeJobFile(t, p, autoPushPathsFile, builtA+"\n")
		writeJobFile(t, p, autoPushResultFile, "1\n")
		writeJobFile(t, p, autoPushErrorFile, "copying path\nerror: unable to upload 'http://cache/x.narinfo': HTTP error 503\n")
		o, err := p.outcome()
		if err != nil {
			t.Fatal(err)
		}
		if got := o.summary(p.cacheURL); !strings.Contains(got, "NOT PUSHED: 1 built paths, nix copy exited 1: error: unable to upload") {
			t.Fatalf("summary %q does not say what was not pushed and why", got)
		}
	})
	t.Run("a link planted by the job is not followed", func(t *testing.T) {
		p := testAutoPush(t)
		secret := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(secret, []byte(builtA+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(secret, filepath.Join(p.hostDir, autoPushPathsFile)); err != nil {
			t.Fatal(err)
		}
		if _, err := p.outcome(); err == nil {
			t.Fatal("the runner read a file through a link the job planted")
		}
	})
}
