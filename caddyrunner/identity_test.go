package caddyrunner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentityLockIsExclusiveAndCleanedUp(t *testing.T) {
	store := fileIdentityStore{path: filepath.Join(t.TempDir(), "data", ".runner")}
	release, err := lockIdentity(store)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockIdentity(store); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("a second lock of a held identity: %v", err)
	}
	release()
	if _, err := os.Stat(store.lockPath()); !os.IsNotExist(err) {
		t.Fatalf("the lock file stays after release: %v", err)
	}
	again, err := lockIdentity(store)
	if err != nil {
		t.Fatalf("locking again after release: %v", err)
	}
	again()
}
