package verify

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cachetest"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
)

// write stores a path with its NAR, as nix copy --to file:// does, and
// returns its hash part and narinfo.
func write(t *testing.T, store storage.Store, content string, refs ...string) (string, string) {
	t.Helper()
	random := make([]byte, 20)
	_, _ = rand.Read(random)
	hash := nixbase32.EncodeToString(random)
	nar := cachetest.NAR(t, content)
	sum := sha256.Sum256(nar)
	url := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
	narinfo := fmt.Sprintf("StorePath: /nix/store/%s-p\nURL: %s\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%[3]s\nNarSize: %[4]d\nReferences: %s\n",
		hash, url, nixbase32.EncodeToString(sum[:]), len(nar), strings.Join(refs, " "))
	ctx := context.Background()
	if err := storage.WriteAll(ctx, store, url, nar); err != nil {
		t.Fatal(err)
	}
	if err := storage.WriteAll(ctx, store, hash+".narinfo", []byte(narinfo)); err != nil {
		t.Fatal(err)
	}
	return hash, narinfo
}

// TestCacheReportsWhatIsBroken verifies a directory with a whole path and
// with the ways a cache breaks: a missing reference, a missing NAR, a NAR
// that is not the one named, and a NAR no narinfo names.
func TestCacheReportsWhatIsBroken(t *testing.T) {
	ctx := context.Background()
	store, err := dir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	base, _ := write(t, store, "base")
	write(t, store, "top", base+"-p")
	report, err := Cache(ctx, store, Options{NarHash: true})
	if err != nil || report.Narinfos != 2 || len(report.Problems) != 0 || len(report.Notes) != 0 {
		t.Fatalf("a whole cache: %+v %v", report, err)
	}

	write(t, store, "orphaned-ref", strings.Repeat("1", 32)+"-gone")
	_, noNar := write(t, store, "no NAR")
	if err := store.Delete(ctx, strings.TrimPrefix(strings.Split(noNar, "\n")[1], "URL: ")); err != nil {
		t.Fatal(err)
	}
	_, swapped := write(t, store, "swapped")
	if err := storage.WriteAll(ctx, store, strings.TrimPrefix(strings.Split(swapped, "\n")[1], "URL: "), cachetest.NAR(t, "something else")); err != nil {
		t.Fatal(err)
	}
	if err := storage.WriteAll(ctx, store, "nar/"+strings.Repeat("0", 52)+".nar", cachetest.NAR(t, "nobody's")); err != nil {
		t.Fatal(err)
	}
	report, err = Cache(ctx, store, Options{NarHash: true})
	if err != nil {
		t.Fatal(err)
	}
	problems := strings.Join(report.Problems, "\n")
	for _, want := range []string{"reference " + strings.Repeat("1", 32) + "-gone is missing", "is missing", "FileHash", "NarHash"} {
		if !strings.Contains(problems, want) {
			t.Errorf("the problems do not say %q:\n%s", want, problems)
		}
	}
	if report.Narinfos != 5 || len(report.Notes) != 1 || !strings.Contains(report.Notes[0], "orphaned NAR") {
		t.Errorf("report %+v: want 5 narinfos and the orphaned NAR as a note", report)
	}
}
