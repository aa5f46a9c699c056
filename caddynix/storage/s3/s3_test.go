package s3

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
)

// newStore starts a real S3 server with a bucket and opens it with 5 MiB
// parts.
func newStore(t *testing.T, prefix string) (*Store, *harness.S3) {
	t.Helper()
	server := harness.StartS3(t)
	server.CreateBucket("cache")
	store, err := Open(t.Context(), Config{
		Bucket: "cache", Prefix: prefix, Endpoint: server.Endpoint, PathStyle: true,
		AccessKeyID: server.AccessKey, SecretAccessKey: server.SecretKey, PartSize: minPartSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	return store, server
}

func put(t *testing.T, s *Store, name string, data []byte) {
	t.Helper()
	up, err := s.Create(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	// Odd-sized writes, so that parts are cut inside them.
	for chunk := range slicesOf(data, 333333) {
		if _, err := up.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := up.Commit(); err != nil {
		t.Fatal(err)
	}
}

func slicesOf(data []byte, n int) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(data) > 0 {
			take := min(n, len(data))
			if !yield(data[:take]) {
				return
			}
			data = data[take:]
		}
	}
}

func pattern(n int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*31 + i/4093)
	}
	return data
}

func TestOpenRefusesWhatIsWrong(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("cache")
	good := Config{Bucket: "cache", Endpoint: server.Endpoint, PathStyle: true, AccessKeyID: server.AccessKey, SecretAccessKey: server.SecretKey}
	for name, tc := range map[string]struct {
		change func(*Config)
		want   string
	}{
		"missing bucket": {func(c *Config) { c.Bucket = "nothing-here" }, "bucket nothing-here does not exist"},
		"wrong secret":   {func(c *Config) { c.SecretAccessKey = "wrong" }, "refused the credentials"},
		"bad endpoint":   {func(c *Config) { c.Endpoint = "s3.example.org" }, "is not a URL"},
		"small parts":    {func(c *Config) { c.PartSize = 1 << 20 }, "minimum of 5 MiB"},
		"no secret":      {func(c *Config) { c.SecretAccessKey = "" }, "no access key id and secret"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := good
			tc.change(&cfg)
			_, err := Open(t.Context(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), server.SecretKey) {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}

func TestObjects(t *testing.T) {
	s, server := newStore(t, "main/")
	ctx := t.Context()
	small, large := []byte("StoreDir: /nix/store\n"), pattern(12<<20+17)
	put(t, s, "nix-cache-info", small)

	// A multipart upload is invisible until it is committed.
	up, err := s.Create(ctx, "nar/big.nar")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Write(large); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "nar/big.nar"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an uncommitted upload is visible: %v", err)
	}
	if err := up.Commit(); err != nil {
		t.Fatal(err)
	}

	obj, info, err := s.Open(ctx, "nar/big.nar")
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	if info.Size != int64(len(large)) || info.Version == "" {
		t.Fatalf("info = %+v", info)
	}
	got, err := io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, large) {
		t.Fatalf("read %d bytes (%v), want the %d written", len(got), err, len(large))
	}
	if _, err := obj.Seek(7<<20, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	tail := make([]byte, 100)
	if _, err := io.ReadFull(obj, tail); err != nil || !bytes.Equal(tail, large[7<<20:7<<20+100]) {
		t.Fatalf("read after a seek: %v", err)
	}
	at := make([]byte, 50)
	if n, err := obj.ReadAt(at, int64(len(large))-20); n != 20 || err != io.EOF || !bytes.Equal(at[:20], large[len(large)-20:]) {
		t.Fatalf("ReadAt at the end = %d, %v", n, err)
	}

	// The object's name is below the prefix, the file:// layout inside it.
	if _, err := server.Client().StatObject(ctx, "cache", "main/nar/big.nar", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("the object is not at main/nar/big.nar: %v", err)
	}
	root, err := s.List(ctx, "")
	if err != nil || len(root) != 1 || root[0].Name != "nix-cache-info" {
		t.Fatalf("List(root) = %+v, %v", root, err)
	}
	nars, err := s.List(ctx, "nar")
	if err != nil || len(nars) != 1 || nars[0].Name != "nar/big.nar" || nars[0].Size != int64(len(large)) {
		t.Fatalf("List(nar) = %+v, %v", nars, err)
	}

	// A reader never mixes two versions of an object.
	reader, _, err := s.Open(ctx, "nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "nix-cache-info", []byte("StoreDir: /other\n"))
	if data, err := io.ReadAll(reader); err == nil && !bytes.Equal(data, small) {
		t.Fatalf("a reader opened before the object was replaced read %q, neither the old version nor an error", data)
	}
	// A read elsewhere in it, once it is replaced, is refused.
	if _, err := reader.Seek(3, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if data, err := io.ReadAll(reader); err == nil {
		t.Fatalf("a range of a replaced object read %q", data)
	}

	if err := s.Delete(ctx, "nar/big.nar"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "nar/big.nar"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat after Delete: %v", err)
	}
	if err := s.Delete(ctx, "nar/big.nar"); err != nil {
		t.Fatalf("deleting a missing object: %v", err)
	}
	if _, _, err := s.Open(ctx, "missing.narinfo"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open of a missing object: %v", err)
	}
}

func TestCommitNewAndAbort(t *testing.T) {
	s, server := newStore(t, "")
	ctx := t.Context()
	for _, size := range []int{100, 11 << 20} {
		first, second := pattern(size), bytes.Repeat([]byte("x"), size)
		for i, data := range [][]byte{first, second} {
			up, err := s.Create(ctx, "realisations/a.doi")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := up.Write(data); err != nil {
				t.Fatal(err)
			}
			created, err := up.CommitNew()
			if err != nil || created != (i == 0) {
				t.Fatalf("CommitNew #%d of %d bytes = %v, %v", i+1, size, created, err)
			}
		}
		obj, _, err := s.Open(ctx, "realisations/a.doi")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(obj)
		_ = obj.Close()
		if !bytes.Equal(got, first) {
			t.Fatalf("CommitNew replaced an object of %d bytes", size)
		}
		if err := s.Delete(ctx, "realisations/a.doi"); err != nil {
			t.Fatal(err)
		}
	}

	// An aborted upload leaves neither an object nor parts.
	up, err := s.Create(ctx, "nar/aborted.nar")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Write(pattern(11 << 20)); err != nil {
		t.Fatal(err)
	}
	up.Abort()
	if _, err := s.Stat(ctx, "nar/aborted.nar"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an aborted upload is visible: %v", err)
	}
	if n := server.UnfinishedUploads("cache"); n != 0 {
		t.Fatalf("%d unfinished uploads after an abort", n)
	}

	// An upload whose writer died is removed once it is old enough.
	dead, err := s.Create(ctx, "nar/dead.nar")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Write(pattern(6 << 20)); err != nil {
		t.Fatal(err)
	}
	if removed, err := s.RemoveAbandoned(ctx); err != nil || len(removed) != 0 {
		t.Fatalf("a fresh upload was taken for abandoned: %v, %v", removed, err)
	}
	s.abandonedAfter = 0
	if removed, err := s.RemoveAbandoned(ctx); err != nil || len(removed) != 1 || removed[0] != "nar/dead.nar" {
		t.Fatalf("RemoveAbandoned = %v, %v", removed, err)
	}
	if n := server.UnfinishedUploads("cache"); n != 0 {
		t.Fatalf("%d unfinished uploads after RemoveAbandoned", n)
	}
}

func TestLease(t *testing.T) {
	s, _ := newStore(t, "main/")
	ctx := t.Context()
	take := func(holder string, ttl time.Duration) (bool, string) {
		t.Helper()
		ok, current, err := s.TryLease(ctx, "retention/lease", holder, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return ok, current
	}
	if ok, _ := take("node-a", time.Minute); !ok {
		t.Fatal("a free lease was not taken")
	}
	if ok, current := take("node-b", time.Minute); ok || !strings.Contains(current, "node-a") {
		t.Fatalf("a held lease was taken by another node (%v), or its holder not named: %q", ok, current)
	}
	if ok, _ := take("node-a", time.Minute); !ok {
		t.Fatal("the holder could not renew its lease")
	}
	if err := s.ReleaseLease(ctx, "retention/lease", "node-b"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := take("node-b", time.Minute); ok {
		t.Fatal("another node's release freed the lease")
	}
	if err := s.ReleaseLease(ctx, "retention/lease", "node-a"); err != nil {
		t.Fatal(err)
	}
	// An expired lease is taken over, and its old holder cannot renew it.
	if ok, _ := take("node-b", time.Millisecond); !ok {
		t.Fatal("a released lease was not taken")
	}
	time.Sleep(20 * time.Millisecond)
	if ok, _ := take("node-c", time.Minute); !ok {
		t.Fatal("an expired lease was not taken over")
	}
	if ok, _ := take("node-b", time.Minute); ok {
		t.Fatal("a lease that expired was renewed by its old holder")
	}

	// Of nodes racing for a free lease, one wins.
	var wg sync.WaitGroup
	wins := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holder := fmt.Sprintf("racer-%d", i)
			if ok, _, err := s.TryLease(ctx, "retention/race", holder, time.Minute); err == nil && ok {
				wins <- holder
			}
		}()
	}
	wg.Wait()
	close(wins)
	if n := len(wins); n != 1 {
		t.Fatalf("%d nodes took the same lease", n)
	}
}

// TestReadsResumeCutStreams reads objects through a proxy that resets
// connections in the middle of the S3 server's answers: every read comes
// out whole, from the version opened, and a stream cut again and again at
// the same byte ends in an error rather than a loop.
func TestReadsResumeCutStreams(t *testing.T) {
	store, proxy := storeBehindFaults(t)
	data := pattern(3 << 20)
	put(t, store, "nar/big.nar", data)

	for _, every := range []int{2, 1} {
		proxy.ResetConnections(every, 300<<10)
		before := proxy.Resets.Load()
		obj, _, err := store.Open(t.Context(), "nar/big.nar")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(obj)
		_ = obj.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("with every %d. connection cut: read %d of %d bytes, equal %v, %v", every, len(got), len(data), bytes.Equal(got, data), err)
		}
		if proxy.Resets.Load() == before {
			t.Fatalf("with every %d. connection cut the proxy cut none", every)
		}
	}

	// Cut before the body every time: no progress, so it gives up.
	proxy.ResetConnections(1, 10)
	obj, _, err := store.Open(t.Context(), "nar/big.nar")
	if err == nil {
		_, err = io.ReadAll(obj)
		_ = obj.Close()
	}
	if err == nil {
		t.Fatal("a stream cut before every byte was read whole")
	}
}

// TestRangeReadsResumeCutStreams reads ranges of an object through a
// proxy that cuts every connection after 100 KiB: each comes out whole.
func TestRangeReadsResumeCutStreams(t *testing.T) {
	store, proxy := storeBehindFaults(t)
	data := pattern(2 << 20)
	put(t, store, "nar/ranges.nar", data)
	obj, _, err := store.Open(t.Context(), "nar/ranges.nar")
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	proxy.ResetConnections(1, 100<<10)
	for _, r := range [][2]int{{0, 1 << 20}, {777, 500 << 10}, {2<<20 - 300<<10, 300 << 10}} {
		buf := make([]byte, r[1])
		n, err := obj.ReadAt(buf, int64(r[0]))
		if (err != nil && !errors.Is(err, io.EOF)) || n != r[1] || !bytes.Equal(buf, data[r[0]:r[0]+r[1]]) {
			t.Fatalf("ReadAt(%d, %d): %d bytes, %v", r[0], r[1], n, err)
		}
	}
	if proxy.Resets.Load() == 0 {
		t.Fatal("the proxy cut no connection")
	}
}

// storeBehindFaults opens a bucket of a real S3 server through a proxy
// that injects faults into the server's answers.
func storeBehindFaults(t *testing.T) (*Store, *harness.FaultProxy) {
	t.Helper()
	server := harness.StartS3(t)
	server.CreateBucket("cache")
	proxy := harness.StartFaultProxy(t, strings.TrimPrefix(server.Endpoint, "http://"))
	store, err := Open(t.Context(), Config{
		Bucket: "cache", Endpoint: "http://" + proxy.Addr, PathStyle: true,
		AccessKeyID: server.AccessKey, SecretAccessKey: server.SecretKey, PartSize: minPartSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	return store, proxy
}
