package caddynix

import "testing"

func TestClassify(t *testing.T) {
	const hash = "0c0k4fb2dq8lcdi0b2jfjhsvprdkkavv"
	const fileHash = "1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0"
	tests := []struct {
		path string
		kind requestKind
		ok   bool
	}{
		{"/", kindLanding, true},
		{"/nix-cache-info", kindCacheInfo, true},
		{"/" + hash + ".narinfo", kindNarinfo, true},
		{"/" + hash + ".ls", kindListing, true},
		{"/nar/" + fileHash + ".nar", kindNar, true},
		{"/nar/" + fileHash + ".nar.xz", kindNar, true},
		{"/nar/" + fileHash + ".nar.zst", kindNar, true},
		{"/nar/" + fileHash + ".nar.bz2", kindNar, true},
		{"/log/" + hash + "-hello-2.12.1.drv", kindLog, true},
		{"/realisations/sha256:" + "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90" + "!out.doi", kindRealisation, true},

		// Not the cache's URL shapes.
		{"/cache.sec", 0, false},
		{"/nix-cache-info/", 0, false},
		{"/" + hash + ".narinfo.bak", 0, false},
		{"/" + hash[:31] + ".narinfo", 0, false},
		{"/" + hash[:31] + "e.narinfo", 0, false}, // e is not a nix32 digit
		{"/" + hash[:31] + "o.narinfo", 0, false},
		{"/" + hash[:31] + "u.ls", 0, false},
		{"/" + hash[:31] + "t.ls", 0, false},
		{"/" + hash[:31] + "A.narinfo", 0, false},
		{"/" + hash[:31] + "/.narinfo", 0, false},
		{"/" + hash + hash + ".narinfo", 0, false},
		{"/.narinfo", 0, false},
		{"/" + hash + "/../cache.sec", 0, false},
		{"/nar/../cache.sec", 0, false},
		{"/nar/" + fileHash + ".nar.exe", 0, false},
		{"/nar//" + fileHash + ".nar", 0, false},
		{"/nar/sub/" + fileHash + ".nar", 0, false},
		{"/log/" + hash + "-x/../../cache.drv", 0, false},
		{"/log/" + hash + "-hello", 0, false},
		{"//nix-cache-info", 0, false},
		{"/nix-cache-info\x00", 0, false},
		{"/..\\cache.sec", 0, false},
	}
	for _, tt := range tests {
		got, ok := classify(tt.path)
		if ok != tt.ok || (ok && got.kind != tt.kind) {
			t.Errorf("classify(%q) = %v, %v; want %v, %v", tt.path, got.kind, ok, tt.kind, tt.ok)
		}
	}
}
