package httpx

import "net/http"

// StatusError is a request answered with an HTTP status: a miss (404,
// with no Err), or a failure a client should not take for a miss (503:
// try again), with Err saying what failed for the log.
type StatusError struct {
	Status int
	Err    error
}

// Error returns a *StatusError.
func Error(status int, err error) *StatusError { return &StatusError{Status: status, Err: err} }

func (e *StatusError) Error() string {
	if e.Err == nil {
		return http.StatusText(e.Status)
	}
	return e.Err.Error()
}

func (e *StatusError) Unwrap() error { return e.Err }
