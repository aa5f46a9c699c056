package harness

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser starts Debian's headless Chromium for the test, driven with
// chromedp, in a window of 1280×800, and returns the context its actions
// run in. It has its own empty profile, none of the background traffic
// Chromium would send to Google, and stops with the test.
func Browser(t testing.TB) context.Context {
	t.Helper()
	chromium := LookTool(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // the tests run as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// The first action starts the browser, for as long as ctx lives.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", chromium, err)
	}
	return ctx
}

// InBrowser runs a browser action with a timeout and returns its value,
// failing the test with what it was doing.
func InBrowser[T any](t testing.TB, ctx context.Context, timeout time.Duration, what string, action chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	value, err := chromedp.Run(ctx, action)
	if err != nil {
		t.Fatalf("in the browser, %s: %v", what, err)
	}
	return value
}

// ArtifactDir is where the test leaves files for people to look at, such
// as screenshots: $E2E_ARTIFACTS/<test>, by default bin/artifacts/<test>
// in the repository (not committed).
func ArtifactDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("E2E_ARTIFACTS")
	if base == "" {
		base = filepath.Join(RepoRoot(t), "bin", "artifacts")
	}
	dir := filepath.Join(base, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Screenshot saves the browser's viewport as a PNG among the test's
// artifacts.
func Screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	png := InBrowser(t, ctx, 30*time.Second, "taking a screenshot", chromedp.CaptureScreenshot())
	path := filepath.Join(ArtifactDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}
