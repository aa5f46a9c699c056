package caddyrunner

import (
	"testing"
	"time"
)

func TestPollWait(t *testing.T) {
	steady := &settings{fetchInterval: 2 * time.Second}
	backingOff := &settings{fetchInterval: 2 * time.Second, fetchMax: 10 * time.Second}
	for _, tc := range []struct {
		name              string
		s                 *settings
		empties, failures int
		want              time.Duration // before jitter
	}{
		{"first poll", steady, 0, 0, 2 * time.Second},
		{"empty polls keep fetch_interval by default", steady, 50, 0, 2 * time.Second},
		{"one failure", steady, 0, 1, 2 * time.Second},
		{"failures double", steady, 0, 2, 4 * time.Second},
		{"failures stop at 5s", steady, 0, 10, 5 * time.Second},
		{"one empty poll", backingOff, 1, 0, 2 * time.Second},
		{"empty polls double", backingOff, 3, 0, 8 * time.Second},
		{"empty polls stop at fetch_interval_max", backingOff, 9, 0, 10 * time.Second},
		{"failures stop at fetch_interval_max above 5s", backingOff, 0, 9, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := pollWait(tc.s, tc.empties, tc.failures)
			if lo, hi := tc.want*4/5, tc.want*6/5; got < lo || got > hi {
				t.Errorf("pollWait = %v, want %v ±20%%", got, tc.want)
			}
		})
	}
}
