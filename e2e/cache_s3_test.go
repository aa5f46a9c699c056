package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
	"github.com/ulikunitz/xz"
)

// s3Node is a caddy serving, signing and taking uploads for the cache in
// bucket nix, below main/, of server.
func s3Node(t *testing.T, server *harness.S3, secret string, storageOptions ...string) *harness.Caddy {
	t.Helper()
	return s3NodeWith(t, server, secret, nil, storageOptions...)
}

// s3NodeWith is s3Node with more options of the nix_cache block.
func s3NodeWith(t *testing.T, server *harness.S3, secret string, cacheOptions []string, storageOptions ...string) *harness.Caddy {
	t.Helper()
	// Collections announce what they delete for a short while only, so
	// that the tests need not wait a minute each time.
	storageOptions = append([]string{"gc_grace " + s3GCGrace.String()}, storageOptions...)
	block := strings.TrimSuffix(server.StorageBlock("nix", "main/"), "}") + "\t" + strings.Join(storageOptions, "\n\t") + "\n}"
	return harness.StartCaddy(t, harness.Caddyfile{Cache: &harness.CacheSite{
		Options: append([]string{"name main", block, "secret_key_file " + secret}, cacheOptions...),
		Upload:  []string{"token " + uploadToken},
	}}.String(), harness.CaddyOptions{})
}

// twoS3Nodes starts an S3 server with the bucket nix and two nodes on it
// that sign with a new key named keyName; it returns the server, the nodes
// and the key's public half.
func twoS3Nodes(t *testing.T, keyName string, cacheOptions []string) (server *harness.S3, a, b *harness.Caddy, public string) {
	t.Helper()
	server = harness.StartS3(t)
	server.CreateBucket("nix")
	secret, public := keygen(t, keyName)
	return server, s3NodeWith(t, server, secret, cacheOptions), s3NodeWith(t, server, secret, cacheOptions), public
}

// s3GCGrace is the grace of the collections on the tests' nodes.
const s3GCGrace = 4 * time.Second

// verifyBucket runs `caddy nix-cache verify --s3` on the bucket and fails
// the test unless it is clean; it returns the report.
func verifyBucket(t *testing.T, server *harness.S3, publicKeyFile string) string {
	t.Helper()
	return verifyCleanAt(t, []string{"AWS_ACCESS_KEY_ID=" + server.AccessKey, "AWS_SECRET_ACCESS_KEY=" + server.SecretKey}, publicKeyFile,
		"--s3", "s3://nix/main/?endpoint="+server.Endpoint+"&addressing-style=path")
}

// TestNodesShareABucket runs two caddy processes on one bucket: what is
// uploaded through one is substituted through the other, trusting only
// the cache's key; overlapping closures uploaded through both at once
// leave a clean cache in the layout of `nix copy --to s3://`.
func TestNodesShareABucket(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		server := harness.StartS3(t)
		server.CreateBucket("nix")
		secret, public := keygen(t, "s3-1")
		publicFile := writePublicKey(t, public)
		a, b := s3Node(t, server, secret), s3Node(t, server, secret)
		nix := client.Netrc(t, uploadToken)

		closure := nix.BuildClosure("s3-one", 1<<20)
		if c := nix.Copy("--to", a.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
			t.Fatalf("nix copy --to A:\n%s", c)
		}
		substituteWhole(t, nix, b.URL(), public, closure, "substituting from B what was uploaded through A")

		// A node that redirects NAR requests to signed URLs of the S3
		// server: clients download from the server itself.
		redirecting := s3Node(t, server, secret, "redirect 5m")
		if c, _ := substitute(nix, redirecting.URL(), public, closure.Top); c.Err != nil {
			t.Fatalf("substituting through NAR redirects:\n%s", c)
		}
		narinfo := get(t, redirecting.URL()+"/"+strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]+".narinfo", nil, 200)
		narURL := ""
		for line := range strings.Lines(narinfo) {
			if u, ok := strings.CutPrefix(line, "URL: "); ok {
				narURL = strings.TrimSpace(u)
			}
		}
		noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := noFollow.Get(redirecting.URL() + "/" + narURL)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if location := resp.Header.Get("Location"); resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(location, server.Endpoint+"/nix/main/"+narURL+"?") || !strings.Contains(location, "X-Amz-Signature=") {
			t.Fatalf("a NAR request got %d to %q, want a redirect to a signed URL of the S3 server", resp.StatusCode, location)
		}
		if resp := do(t, "GET", redirecting.URL()+"/nar/"+strings.Repeat("0", 52)+".nar.zst", nil); resp.StatusCode != 404 {
			t.Fatalf("a missing NAR got %d through the redirecting node, want 404", resp.StatusCode)
		}

		// Overlapping closures through both nodes at once.
		x, y := nix.BuildClosure("s3-x", 256<<10), nix.BuildClosure("s3-y", 256<<10)
		targets := []string{x.Top, middleOf(t, x), y.Top, middleOf(t, y)}
		var wg sync.WaitGroup
		results := make([]harness.Command, 8)
		for i := range results {
			node := []*harness.Caddy{a, b}[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = nix.WithFreshCache().Copy("--to", node.URL()+"/upload?compression=zstd", targets[i%len(targets)])
			}()
		}
		wg.Wait()
		for i, c := range results {
			if c.Err != nil {
				t.Errorf("concurrent nix copy %d failed:\n%s", i, c)
			}
		}
		for _, closure := range []harness.Closure{x, y} {
			for _, node := range []*harness.Caddy{a, b} {
				if c, _ := substitute(nix, node.URL(), public, closure.Top); c.Err != nil {
					t.Fatalf("substituting %s from %s:\n%s", closure.Top, node.URL(), c)
				}
			}
		}
		verifyBucket(t, server, publicFile)

		// The bucket has the layout nix copy --to s3:// writes, below the
		// prefix.
		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		for _, key := range []string{"main/nix-cache-info", "main/" + hash + ".narinfo"} {
			if _, err := server.Client().StatObject(context.Background(), "nix", key, minio.StatObjectOptions{}); err != nil {
				t.Errorf("the bucket has no %s: %v", key, err)
			}
		}
	})
}

// TestKilledNodeLeavesNoUpload kills a node in the middle of a 256 MiB
// upload: the other node never serves the path, the cache stays clean,
// the retried copy succeeds, and once the killed node starts again the
// unfinished upload's parts are gone.
func TestKilledNodeLeavesNoUpload(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	secret, public := keygen(t, "s3-kill-1")
	publicFile := writePublicKey(t, public)
	a := s3Node(t, server, secret, "abandon_uploads_after 1s")
	b := s3Node(t, server, secret)
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	closure := nix.BuildClosure("s3-kill", 256<<20)
	hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]

	copyDone := make(chan harness.Command, 1)
	go func() {
		copyDone <- nix.WithFreshCache().Copy("--to", a.URL()+"/upload?compression=none", closure.Top)
	}()
	// Kill A once parts of the big NAR are on the server.
	err := harness.Eventually(2*time.Minute, 50*time.Millisecond, func() error {
		if n := server.UnfinishedUploads("nix"); n == 0 {
			return fmt.Errorf("no upload in progress yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Kill()
	if c := <-copyDone; c.Err == nil {
		t.Fatalf("nix copy succeeded although its server was killed:\n%s", c)
	}
	if resp := do(t, "GET", b.URL()+"/"+hash+".narinfo", nil); resp.StatusCode != 404 {
		t.Fatalf("B answers %d for the narinfo of an upload that never finished", resp.StatusCode)
	}
	verifyBucket(t, server, publicFile)

	a.Start()
	if c := nix.WithFreshCache().Copy("--to", a.URL()+"/upload?compression=none", closure.Top); c.Err != nil {
		t.Fatalf("the retried nix copy failed:\n%s", c)
	}
	if c, _ := substitute(nix, b.URL(), public, closure.Top); c.Err != nil {
		t.Fatalf("substituting from B after the retry:\n%s", c)
	}
	if n := server.UnfinishedUploads("nix"); n != 0 {
		t.Fatalf("%d unfinished uploads remain after the killed node started again", n)
	}
	verifyBucket(t, server, publicFile)
}

// TestS3ServerDownIsNoMiss kills the S3 server while a node streams a NAR
// from it: the download fails rather than ending short as a success, and
// every request meanwhile is a 503 with a log line, never a 404 a client
// would remember.
func TestS3ServerDownIsNoMiss(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	secret, _ := keygen(t, "s3-down-1")
	node := s3Node(t, server, secret)
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	closure := nix.BuildClosure("s3-down", 96<<20)
	if c := nix.Copy("--to", node.URL()+"/upload?compression=none", closure.Top); c.Err != nil {
		t.Fatalf("nix copy:\n%s", c)
	}
	narinfo := narinfoURL(node.URL(), closure.Top)
	var narURL string
	for line := range strings.Lines(get(t, narinfo, nil, 200)) {
		if nar, ok := strings.CutPrefix(line, "URL: "); ok {
			narURL = node.URL() + "/" + strings.TrimSpace(nar)
		}
	}

	resp, err := http.Get(narURL)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET the NAR: %v %v", resp, err)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	server.Kill()
	n, err := io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err == nil {
		t.Fatalf("the NAR download ended as a success after %d more bytes of %d although the S3 server died", n, resp.ContentLength)
	}
	t.Logf("the download failed after %d of %d bytes: %v", n+1<<20, resp.ContentLength, err)

	for _, url := range []string{narinfo, narURL} {
		for _, method := range []string{"GET", "HEAD"} {
			start := time.Now()
			resp := do(t, method, url, nil)
			t.Logf("%s took %v", method, time.Since(start))
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("%s %s with the S3 server down: %d, want 503", method, url, resp.StatusCode)
			}
		}
	}
	if !strings.Contains(node.Log(), "the cache's storage failed") && !strings.Contains(node.Log(), "opening narinfo") {
		t.Fatalf("no log line says the storage failed:\n%s", node.Log())
	}
}

// TestCollectionOnOneNodeWhileAnotherServes collects the whole cache on A
// while a client walks every closure on B and eight more ask B for the
// narinfos as fast as it answers, from memory: B never answers a narinfo
// whose references or NAR are gone, and once the collection is over never
// answers 200 for a path it deleted. A lease held by another node stops a
// collection.
func TestCollectionOnOneNodeWhileAnotherServes(t *testing.T) {
	server, a, b, _ := twoS3Nodes(t, "s3-gc-1", nil)
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	var hashes []string
	for i := range 6 {
		closure := nix.BuildClosure(fmt.Sprintf("s3-gc-%d", i), 64<<10)
		if c := nix.Copy("--to", b.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
			t.Fatalf("nix copy:\n%s", c)
		}
		for _, p := range closure.Paths {
			hashes = append(hashes, strings.SplitN(filepath.Base(p), "-", 2)[0])
		}
	}

	// Another node's lease stops the collection, and nothing is deleted.
	held := fmt.Sprintf(`{"holder":"another node","expires":%q}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if _, err := server.Client().PutObject(context.Background(), "nix", "main/retention/lease", strings.NewReader(held), int64(len(held)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if body := adminPost(t, a, "/nix-cache/gc?cache=main&max_size=1&min_age=0s"); !strings.Contains(body, "another node collects this cache") {
		t.Fatalf("a collection under another node's lease answered %s", body)
	}
	if resp := do(t, "GET", b.URL()+"/"+hashes[0]+".narinfo", nil); resp.StatusCode != 200 {
		t.Fatalf("a refused collection deleted %s", hashes[0])
	}
	if err := server.Client().RemoveObject(context.Background(), "nix", "main/retention/lease", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	// A client walks every closure on B while A collects.
	ctx, stop := context.WithCancel(context.Background())
	var broken []string
	var served, walks int
	walked := make(chan struct{})
	go func() {
		defer close(walked)
		for ctx.Err() == nil {
			walks++
			for _, hash := range hashes {
				if problem, ok := closureProblem(t, b.URL(), hash); ok {
					served++
					if problem != "" {
						broken = append(broken, problem)
					}
				}
			}
		}
	}()
	// Meanwhile eight clients ask B for the narinfos as fast as it answers.
	type answer struct {
		start  time.Time
		status int
	}
	var answersMu sync.Mutex
	var answers []answer
	var loaders sync.WaitGroup
	for client := range 8 {
		loaders.Go(func() {
			for i := client; ctx.Err() == nil; i++ {
				start := time.Now()
				resp, err := http.Get(b.URL() + "/" + hashes[i%len(hashes)] + ".narinfo")
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				answersMu.Lock()
				answers = append(answers, answer{start, resp.StatusCode})
				answersMu.Unlock()
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	body := adminPost(t, a, "/nix-cache/gc?cache=main&max_size=1&min_age=0s")
	collected := time.Now()
	time.Sleep(s3GCGrace)
	stop()
	<-walked
	loaders.Wait()
	if !strings.Contains(body, `"deleted"`) || strings.Contains(body, `"deleted": null`) || strings.Contains(body, `"deleted":null`) {
		t.Fatalf("the collection deleted nothing: %s", body)
	}
	if len(broken) > 0 {
		t.Fatalf("B served %d narinfos whose closure was incomplete, e.g. %s", len(broken), broken[0])
	}
	t.Logf("the walk saw %d narinfos served in %d walks of %d paths", served, walks, len(hashes))
	var before, after, stale int
	for _, a := range answers {
		switch {
		case a.start.Before(collected):
			if a.status == http.StatusOK {
				before++
			}
		case a.status == http.StatusOK:
			stale++
		default:
			after++
		}
	}
	t.Logf("B answered %d narinfo requests: %d with 200 before the collection ended, %d after it with anything but 200, %d after it with 200", len(answers), before, after, stale)
	if stale > 0 {
		t.Fatalf("B answered 200 %d times for narinfos the collection on A had deleted", stale)
	}
	if before == 0 || after == 0 {
		t.Fatalf("the load on B did not overlap the collection")
	}
	if served == 0 || walks < 2 {
		t.Fatalf("the walk saw %d narinfos in %d walks: it did not overlap the collection", served, walks)
	}
	for _, hash := range hashes {
		if resp := do(t, "GET", b.URL()+"/"+hash+".narinfo", nil); resp.StatusCode != 404 {
			t.Fatalf("after the collection B still serves %s", hash)
		}
	}
}

// TestUploadsDuringACollectionOnAnotherNode pushes closures through B that
// need a path that a collection on A deletes: every push either lands
// whole, with the collection keeping what it needs, or is refused with a
// reason, and lands when pushed again; B never serves a broken closure.
func TestUploadsDuringACollectionOnAnotherNode(t *testing.T) {
	server, a, b, public := twoS3Nodes(t, "s3-race-1", nil)
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	tops, base := nix.BuildSharedClosures("s3-race", 8, 16<<10)
	to := b.URL() + "/upload?compression=zstd"
	if c := nix.Copy("--to", to, base); c.Err != nil {
		t.Fatalf("nix copy of the base:\n%s", c)
	}

	type push struct {
		top string
		c   harness.Command
	}
	pushed := make(chan push, len(tops))
	go func() {
		defer close(pushed)
		// Pushes start as soon as A announces what it deletes, and go on
		// through its grace and deletions.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := server.Client().StatObject(context.Background(), "nix", "main/retention/doomed", minio.StatObjectOptions{}); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, top := range tops {
			pushed <- push{top, nix.WithFreshCache().Copy("--to", to, top)}
			time.Sleep(s3GCGrace / 8)
		}
	}()
	answer := adminPost(t, a, "/nix-cache/gc?cache=main&max_size=1&min_age=0s")
	// The collection planned to delete the base: it did, or a push that
	// landed in its grace kept it.
	if !strings.Contains(answer, "s3-race-base") && !strings.Contains(answer, `"kept_by_uploads":1`) {
		t.Fatalf("the collection neither deleted the base nor kept it for an upload: %s", answer)
	}
	var landed, refused []string
	for p := range pushed {
		switch {
		case p.c.Err == nil:
			landed = append(landed, p.top)
		case strings.Contains(p.c.Output, "about to be deleted by a collection"), strings.Contains(p.c.Output, "narinfo-cache-positive-ttl 0"):
			refused = append(refused, p.top)
		default:
			t.Fatalf("a push during the collection failed without saying why:\n%s", p.c)
		}
	}
	t.Logf("during the collection %d pushes landed and %d were refused: %s", len(landed), len(refused), answer)
	if len(refused) == 0 {
		t.Fatalf("no push was refused although every one needs the base the collection announced")
	}
	for _, top := range landed {
		hash := strings.SplitN(filepath.Base(top), "-", 2)[0]
		if problem, ok := closureProblem(t, b.URL(), hash); !ok || problem != "" {
			t.Fatalf("B serves a push that landed during the collection broken (served %v): %s", ok, problem)
		}
	}
	verifyBucket(t, server, writePublicKey(t, public))

	// What was refused lands when pushed again, as the refusal says.
	for _, top := range refused {
		if c := nix.Copy("--to", to, "--option", "narinfo-cache-positive-ttl", "0", top); c.Err != nil {
			t.Fatalf("pushing a refused closure again:\n%s", c)
		}
	}
	for _, top := range tops {
		if c, _ := substitute(nix, a.URL(), public, top); c.Err != nil {
			t.Fatalf("substituting %s from A:\n%s", top, c)
		}
	}
}

// TestRetentionCountsUsesOnEveryNode collects on A a cache whose older
// closure only B served: A deletes the newer one, which nobody used.
func TestRetentionCountsUsesOnEveryNode(t *testing.T) {
	// Nodes that collect share their use times.
	_, a, b, _ := twoS3Nodes(t, "s3-uses-1", []string{"retention {\n\t\tmax_age 90d\n\t}"})
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	older := nix.BuildClosure("s3-uses-older", 64<<10)
	newer := nix.BuildClosure("s3-uses-newer", 64<<10)
	for _, closure := range []harness.Closure{older, newer} {
		if c := nix.Copy("--to", a.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
			t.Fatalf("nix copy:\n%s", c)
		}
		time.Sleep(1100 * time.Millisecond)
	}
	get(t, narinfoURL(b.URL(), older.Top), nil, 200)
	// Looking a path up writes down the uses B noted, as B does every 30s.
	adminGet(t, b, "/nix-cache/path-info?cache=main&store_path="+older.Top)

	var dry gcAnswer
	if err := json.Unmarshal([]byte(adminPost(t, a, "/nix-cache/gc?cache=main&dry_run=true")), &dry); err != nil {
		t.Fatal(err)
	}
	var answer gcAnswer
	body := adminPost(t, a, fmt.Sprintf("/nix-cache/gc?cache=main&max_size=%d&min_age=0s", dry.SizeBefore-1))
	if err := json.Unmarshal([]byte(body), &answer); err != nil {
		t.Fatal(err)
	}
	if len(answer.Deleted) != 1 || answer.Deleted[0] != newer.Top {
		t.Fatalf("A deleted %v, want only %s: B served %s after it was pushed", answer.Deleted, newer.Top, older.Top)
	}
	get(t, narinfoURL(b.URL(), older.Top), nil, 200)
}

// closureProblem fetches a narinfo from the node at url and, if it is
// served, its references' narinfos and its NAR. A missing reference or
// NAR counts only if the narinfo is still served afterwards: deleted in
// the meantime, it was consistent when it was served. It reports whether
// the narinfo was served, and what was wrong.
func closureProblem(t *testing.T, url, hash string) (string, bool) {
	resp := do(t, "GET", url+"/"+hash+".narinfo", nil)
	if resp.StatusCode != 200 {
		return "", false
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	var wanted []string
	for line := range strings.Lines(string(body)) {
		if refs, ok := strings.CutPrefix(line, "References: "); ok {
			for _, ref := range strings.Fields(refs) {
				if ref := strings.SplitN(ref, "-", 2)[0]; ref != hash {
					wanted = append(wanted, "/"+ref+".narinfo")
				}
			}
		}
		if nar, ok := strings.CutPrefix(line, "URL: "); ok {
			wanted = append(wanted, "/"+strings.TrimSpace(nar))
		}
	}
	for _, path := range wanted {
		resp := do(t, "HEAD", url+path, nil)
		_ = resp.Body.Close()
		if resp.StatusCode == 200 {
			continue
		}
		again := do(t, "GET", url+"/"+hash+".narinfo", nil)
		_ = again.Body.Close()
		if again.StatusCode == 200 {
			return fmt.Sprintf("%s.narinfo is served without %s (%d)", hash, path, resp.StatusCode), true
		}
	}
	return "", true
}

// adminPost posts to caddy's admin endpoint and returns the answer's body,
// whatever its status.
func adminPost(t *testing.T, caddy *harness.Caddy, path string) string {
	t.Helper()
	_, body := adminCall(t, caddy, http.MethodPost, path)
	return body
}

// TestBucketInNixLayout checks that the bucket's layout is Nix's: a cache
// that Nix wrote (`nix copy --to file://`, the layout its s3:// store
// writes too) put into the bucket as it is, with a narinfo and a listing
// encoded as narinfo- and ls-compression store them, is served by a node,
// and what a
// node stored, taken out of the bucket, is a cache Nix reads with `nix copy
// --from file://`. Debian's Nix signs no S3 requests the S3 server takes,
// so the test moves the objects itself.
func TestBucketInNixLayout(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		server := harness.StartS3(t)
		server.CreateBucket("nix")
		nix := client.Netrc(t, uploadToken)
		s3 := server.Client()
		ctx := context.Background()

		closure := nix.BuildClosure("by-nix", 256<<10)
		written := filepath.Join(t.TempDir(), "written")
		if c := nix.Copy("--to", "file://"+written+"?compression=zstd&write-nar-listing=true", closure.Top); c.Err != nil {
			t.Fatalf("nix copy --to file://:\n%s", c)
		}
		err := filepath.WalkDir(written, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(written, path)
			_, err = s3.FPutObject(ctx, "nix", "main/"+filepath.ToSlash(rel), path, minio.PutObjectOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		// As Nix's s3:// store (and Hydra) store them with narinfo- and
		// ls-compression: encoded, with a Content-Encoding.
		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		putEncoded(t, s3, filepath.Join(written, hash+".narinfo"), "main/"+hash+".narinfo", "xz")
		putEncoded(t, s3, filepath.Join(written, hash+".ls"), "main/"+hash+".ls", "br")
		secret, public := keygen(t, "s3-layout-1")
		node := s3Node(t, server, secret)
		substituteWhole(t, nix, node.URL(), public, closure, "substituting from a node the cache Nix wrote")
		if ls := nix.Must("nix", "store", "ls", "--store", node.URL(), "--option", "trusted-public-keys", public, closure.Top+"/"); !strings.Contains(ls, "references") {
			t.Fatalf("nix store ls through the node:\n%s", ls)
		}

		other := nix.BuildClosure("by-node", 256<<10)
		if c := nix.Copy("--to", node.URL()+"/upload?compression=xz", other.Top); c.Err != nil {
			t.Fatalf("nix copy --to the node:\n%s", c)
		}
		taken := filepath.Join(t.TempDir(), "taken")
		for obj := range s3.ListObjects(ctx, "nix", minio.ListObjectsOptions{Prefix: "main/", Recursive: true}) {
			if obj.Err != nil {
				t.Fatal(obj.Err)
			}
			if err := s3.FGetObject(ctx, "nix", obj.Key, filepath.Join(taken, strings.TrimPrefix(obj.Key, "main/")), minio.GetObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		readBack := nix.ChrootStore()
		if c := nix.Copy("--from", "file://"+taken, "--to", readBack, "--no-check-sigs", other.Top); c.Err != nil {
			t.Fatalf("nix copy --from what the node stored in the bucket:\n%s", c)
		}
		if got := nix.StorePaths(readBack); !slices.Equal(got, other.Paths) {
			t.Fatalf("nix read back %v, want %v", got, other.Paths)
		}
	})
}

// putEncoded stores the file at key compressed with encoding (xz or br),
// with that Content-Encoding.
func putEncoded(t *testing.T, s3 *minio.Client, file, key, encoding string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var w io.WriteCloser
	switch encoding {
	case "xz":
		if w, err = xz.NewWriter(&buf); err != nil {
			t.Fatal(err)
		}
	case "br":
		w = brotli.NewWriter(&buf)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s3.PutObject(context.Background(), "nix", key, &buf, int64(buf.Len()), minio.PutObjectOptions{ContentEncoding: encoding}); err != nil {
		t.Fatal(err)
	}
}

// TestBucketWrittenByNix has current Nix write the bucket itself with
// `nix copy --to s3://` (narinfo and listings compressed, as Hydra
// writes them), then substitutes through a node signing what Nix wrote,
// and has Nix read back with `nix copy --from s3://` what a node stored.
// Debian's Nix 2.8 has no S3 store, and Debian's current Nix sends its S3
// requests unsigned, so this bucket admits anonymous reads and writes; the
// nodes sign theirs.
func TestBucketWrittenByNix(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	server.AllowAnonymous("nix", true)
	// Without the netrc of the upload token, which curl would send to the
	// S3 server as well.
	nix := harness.NixCurrent().New(t, "")
	bucketURL := "s3://nix/main?endpoint=" + server.Endpoint + "&region=us-east-1&addressing-style=path"

	closure := nix.BuildClosure("by-nix-s3", 256<<10)
	if c := nix.Copy("--to", bucketURL+"&compression=zstd&write-nar-listing=true&narinfo-compression=xz&ls-compression=br", closure.Top); c.Err != nil {
		t.Fatalf("nix copy --to s3://:\n%s", c)
	}
	secret, public := keygen(t, "s3-by-nix-1")
	node := s3Node(t, server, secret)
	substituteWhole(t, nix, node.URL(), public, closure, "substituting through a node what Nix wrote to the bucket")
	if ls := nix.Must("nix", "store", "ls", "--store", node.URL(), "--option", "trusted-public-keys", public, closure.Top+"/"); !strings.Contains(ls, "references") {
		t.Fatalf("nix store ls through the node:\n%s", ls)
	}

	uploader := harness.NixCurrent().Netrc(t, uploadToken)
	other := uploader.BuildClosure("by-node-s3", 256<<10)
	if c := uploader.Copy("--to", node.URL()+"/upload?compression=xz", other.Top); c.Err != nil {
		t.Fatalf("nix copy --to the node:\n%s", c)
	}
	readBack := nix.ChrootStore()
	if c := nix.Copy("--from", bucketURL, "--to", readBack, "--no-check-sigs", other.Top); c.Err != nil {
		t.Fatalf("nix copy --from s3:// of what the node stored:\n%s", c)
	}
	if got := nix.StorePaths(readBack); !slices.Equal(got, other.Paths) {
		t.Fatalf("nix read back %v, want %v", got, other.Paths)
	}
}
