package metrics

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRecordCountsEachKindAndStatus checks that the counters a request is
// counted in are those of its kind and status, whether looked up once at
// start or on first use.
func TestRecordCountsEachKindAndStatus(t *testing.T) {
	requests := func(kind, code string) float64 { return testutil.ToFloat64(requestsTotal.WithLabelValues(kind, code)) }
	bytes := func(kind string) float64 { return testutil.ToFloat64(bytesServed.WithLabelValues(kind)) }
	ok0, missing0, other0, bytes0 := requests("narinfo", "200"), requests("narinfo", "404"), requests(OtherKind, "405"), bytes("narinfo")

	for range 2 {
		w := NewWriter(httptest.NewRecorder())
		_, _ = w.Write([]byte("StorePath: /nix/store/x\n"))
		w.Record("narinfo", nil)
	}
	w := NewWriter(httptest.NewRecorder())
	w.Record("narinfo", caddyhttp.Error(http.StatusNotFound, errors.New("no such narinfo")))
	w = NewWriter(httptest.NewRecorder())
	w.WriteHeader(http.StatusMethodNotAllowed)
	w.Record(OtherKind, nil)

	if got := requests("narinfo", "200") - ok0; got != 2 {
		t.Errorf("narinfo 200: counted %v, want 2", got)
	}
	if got := requests("narinfo", "404") - missing0; got != 1 {
		t.Errorf("narinfo 404: counted %v, want 1", got)
	}
	if got := requests(OtherKind, "405") - other0; got != 1 {
		t.Errorf("other 405: counted %v, want 1", got)
	}
	if got := bytes("narinfo") - bytes0; got != 2*24 {
		t.Errorf("narinfo bytes: counted %v, want 48", got)
	}
}

// TestNarinfoLookupCountsByResult checks the lookups' counters.
func TestNarinfoLookupCountsByResult(t *testing.T) {
	lookups := func(result string) float64 { return testutil.ToFloat64(narinfoLookups.WithLabelValues(result)) }
	served0, missing0 := lookups("served"), lookups("missing")
	Serve{}.NarinfoLookup("served")
	Serve{}.NarinfoLookup("served")
	Serve{}.NarinfoLookup("missing")
	if got := lookups("served") - served0; got != 2 {
		t.Errorf("served: counted %v, want 2", got)
	}
	if got := lookups("missing") - missing0; got != 1 {
		t.Errorf("missing: counted %v, want 1", got)
	}
}
