package caddynix

import "sync"

// inFlight counts the requests a handler is serving. A reload cleans up
// the old configuration's handlers while their requests go on (an upload
// of a large NAR, a download), so what those requests use is released only
// after the last of them ends.
type inFlight struct {
	mu sync.Mutex
	n  int
	// release runs when the last request ends, once cleanup asked for it.
	release func()
}

func (f *inFlight) start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
}

func (f *inFlight) end() {
	f.mu.Lock()
	f.n--
	var release func()
	if f.n == 0 {
		release, f.release = f.release, nil
	}
	f.mu.Unlock()
	if release != nil {
		release()
	}
}

// releaseWhenIdle reports whether requests are in flight, and if so has
// the last of them run release as it ends. No request starts once a
// handler is being cleaned up: its server has stopped taking them.
func (f *inFlight) releaseWhenIdle(release func()) (busy bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return false
	}
	f.release = release
	return true
}
