package activity

import (
	"fmt"
	"testing"
	"time"
)

func TestSamplesKeepAWeek(t *testing.T) {
	r := new(Recorder)
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	minutes := int(History/time.Minute) + 100
	for i := range minutes {
		at := start.Add(time.Duration(i) * time.Minute)
		if !r.Due(at) {
			t.Fatalf("a sample a minute after the last is not due at %s", at)
		}
		r.Add(Sample{At: at, Requests: int64(i)})
	}
	samples := r.Samples()
	if first, last := samples[0].At, samples[len(samples)-1].At; last.Sub(first) != History {
		t.Fatalf("samples span %s, want %s", last.Sub(first), History)
	}
	if r.Due(samples[len(samples)-1].At.Add(30 * time.Second)) {
		t.Fatal("a second sample within the minute is due: configurations overlapping in a reload would both sample")
	}
}

func TestPushesGroupByRunAndKeepTheLatest(t *testing.T) {
	r := new(Recorder)
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	run := Push{Repository: "pkgs/main", RunID: "7", Tier: "trusted"}
	r.Pushed(run, 100, at)
	r.Pushed(Push{Token: "token 1", Tier: "trusted"}, 5, at.Add(time.Second))
	r.Pushed(run, 50, at.Add(2*time.Second))
	pushes := r.Pushes()
	if len(pushes) != 2 || pushes[0].RunID != "7" || pushes[0].Paths != 2 || pushes[0].NarBytes != 150 ||
		!pushes[0].First.Equal(at) || !pushes[0].Last.Equal(at.Add(2*time.Second)) || pushes[1].Token != "token 1" {
		t.Fatalf("pushes: %+v", pushes)
	}
	for i := range 10_000 {
		r.Pushed(Push{Repository: "pkgs/main", RunID: fmt.Sprint(1000 + i), Tier: "trusted"}, 1, at.Add(time.Hour))
	}
	if pushes := r.Pushes(); len(pushes) != pushesKept || pushes[0].RunID != "10999" {
		t.Fatalf("after 10,000 runs the recorder keeps %d, newest %s", len(pushes), pushes[0].RunID)
	}
}

func TestLookupsAndRequestsCount(t *testing.T) {
	r := For("activity-test")
	if For("activity-test") != r {
		t.Fatal("For returns another recorder for the same cache")
	}
	r.Request()
	r.NarinfoLookup("served")
	r.NarinfoLookup("missing")
	r.NarinfoLookup("missing")
	now := r.Current(time.Now(), 10, 1)
	if now.Requests != 1 || now.NarinfoServed != 1 || now.NarinfoMissed != 2 || now.Bytes != 10 || now.Paths != 1 {
		t.Fatalf("current: %+v", now)
	}
}
