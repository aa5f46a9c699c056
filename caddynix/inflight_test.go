package caddynix

import "testing"

func TestReleaseWaitsForTheLastRequest(t *testing.T) {
	var requests inFlight
	released := 0
	release := func() { released++ }
	if requests.releaseWhenIdle(release) {
		t.Fatal("with no request in flight, release is not left for later")
	}
	requests.start()
	requests.start()
	if !requests.releaseWhenIdle(release) {
		t.Fatal("with requests in flight, release is run now")
	}
	requests.end()
	if released != 0 {
		t.Fatal("released while a request was still in flight")
	}
	requests.end()
	if released != 1 {
		t.Fatalf("released %d times after the last request ended, want once", released)
	}
}
