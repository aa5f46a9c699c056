package upload

import (
	"fmt"
	"time"
)

// The statuses uploads are refused with, as HTTP numbers them.
const (
	statusBadRequest       = 400
	statusMethodNotAllowed = 405
	statusConflict         = 409
	statusTooLarge         = 413
	statusUnavailable      = 503
	// statusInsufficientStorage answers an upload the full disk could
	// not take.
	statusInsufficientStorage = 507
)

// Error is an upload refused with an HTTP status (4xx, 503 to try again,
// or 507 when the storage is full) and a one-line reason.
type Error struct {
	Status int
	// Reason is a short label for metrics, such as nar_hash_mismatch.
	Reason string
	Msg    string
	// RetryAfter, when set, is how long the client should wait.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

// Reject returns an *Error.
func Reject(status int, reason, format string, args ...any) *Error {
	return &Error{Status: status, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

func reject(status int, reason, format string, args ...any) *Error {
	return Reject(status, reason, format, args...)
}
