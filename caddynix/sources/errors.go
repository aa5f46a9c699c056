package sources

import (
	"errors"
	"fmt"
)

// ErrNotFound is a path or file no source has.
var ErrNotFound = errors.New("not in the live store or any upstream")

// StorageError is the cache's own storage failing while it keeps what an
// upstream sends.
type StorageError struct {
	What, File string
	Err        error
}

func (e *StorageError) Error() string { return fmt.Sprintf("%s %s: %v", e.What, e.File, e.Err) }

func (e *StorageError) Unwrap() error { return e.Err }
