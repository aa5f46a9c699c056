package cacheurl

import "testing"

func TestClassify(t *testing.T) {
	const hash = "0c0k4fb2dq8lcdi0b2jfjhsvprdkkavv"
	const fileHash = "1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0"
	tests := []struct {
		path string
		kind Kind
		ok   bool
	}{
		{"/", Landing, true},
		{"/nix-cache-info", CacheInfo, true},
		{"/" + hash + ".narinfo", NarInfo, true},
		{"/" + hash + ".ls", Listing, true},
		{"/nar/" + fileHash + ".nar", Nar, true},
		{"/nar/" + fileHash + ".nar.xz", Nar, true},
		{"/nar/" + fileHash + ".nar.zst", Nar, true},
		{"/nar/" + fileHash + ".nar.bz2", Nar, true},
		{"/log/" + hash + "-hello-2.12.1.drv", Log, true},
		{"/realisations/sha256:" + "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90" + "!out.doi", Realisation, true},

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
		got, ok := Classify(tt.path)
		if ok != tt.ok || (ok && got.Kind != tt.kind) {
			t.Errorf("Classify(%q) = %v, %v; want %v, %v", tt.path, got.Kind, ok, tt.kind, tt.ok)
		}
	}
}
