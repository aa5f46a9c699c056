package fswatch

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// drained returns the names Drain reports, once each, sorted.
func drained(t *testing.T, w *Watch) []string {
	t.Helper()
	var names []string
	if err := w.Drain(func(name string) {
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// TestDrainReportsWhatChangedBeforeIt: every file written, renamed or
// removed before Drain is named by it, with no wait; a quiet directory
// reports nothing, and a removed directory ends the watch.
func TestDrainReportsWhatChangedBeforeIt(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir)
	if err != nil {
		t.Fatalf("watching a temporary directory: %v", err)
	}
	defer func() { _ = w.Close() }()
	if names := drained(t, w); len(names) != 0 {
		t.Fatalf("a quiet directory reported %v", names)
	}
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "a"), filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	if names := drained(t, w); !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("after writing a and renaming it to b: %v", names)
	}
	f, err := os.OpenFile(filepath.Join(dir, "b"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("more"); err != nil {
		t.Fatal(err)
	}
	if names := drained(t, w); !slices.Equal(names, []string{"b"}) {
		t.Fatalf("after a write to an open b: %v", names)
	}
	_ = f.Close()
	_ = drained(t, w)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := w.Drain(func(string) {}); err == nil {
		t.Fatal("the watch of a removed directory goes on")
	}
}

// TestOpenRefusesWhatItCannotWatch: a directory that is not there is an
// error that names it.
func TestOpenRefusesWhatItCannotWatch(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("watching a missing directory succeeded")
	}
}
