package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// maxRecordSize bounds an overlay's record read into memory.
const maxRecordSize = 64 << 10

// Record is what the storage keeps of an overlay beside its files: whose
// it is, and when it was made and last pushed to.
type Record struct {
	Key
	ID       string    `json:"-"`
	Created  time.Time `json:"created"`
	LastPush time.Time `json:"last_push"`
}

// Store returns the overlay id's binary cache in store.
func Store(store storage.Store, id string) storage.Store { return storage.Sub(store, Prefix(id)) }

// Touch records a push to the overlay of key at time at, creating its
// record on the first.
func Touch(ctx context.Context, store storage.Store, key Key, at time.Time) error {
	if err := key.check(); err != nil {
		return err
	}
	id := key.ID()
	rec, err := read(ctx, store, id)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		rec = Record{Key: key, ID: id, Created: at}
	case err != nil:
		return err
	}
	if at.After(rec.LastPush) {
		rec.LastPush = at
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return storage.WriteAll(ctx, store, recordName(id), data)
}

// read returns the record of the overlay id.
func read(ctx context.Context, store storage.Store, id string) (Record, error) {
	data, err := storage.ReadAll(ctx, store, recordName(id), maxRecordSize)
	if err != nil {
		return Record{}, err
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return Record{}, fmt.Errorf("overlay record %s: %w", recordName(id), err)
	}
	if rec.ID = id; rec.Key.ID() != id {
		return Record{}, fmt.Errorf("overlay record %s names another overlay (%s)", recordName(id), rec.Key)
	}
	return rec, nil
}

// List returns the records of every overlay in store. A record that
// cannot be read is skipped and reported in the error, which does not
// keep the others from being returned.
func List(ctx context.Context, store storage.Store) ([]Record, error) {
	infos, err := store.List(ctx, Dir)
	if err != nil {
		return nil, err
	}
	var records []Record
	var errs []error
	for _, info := range infos {
		id, ok := strings.CutSuffix(strings.TrimPrefix(info.Name, Dir+"/"), ".json")
		if !ok || !IsID(id) {
			continue
		}
		rec, err := read(ctx, store, id)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		records = append(records, rec)
	}
	return records, errors.Join(errs...)
}

// layoutDirs are the directories of a binary cache's layout.
var layoutDirs = []string{"", "nar", "log", "realisations"}

// Drop deletes the overlay id whole: its files first, its record last, so
// that an overlay half dropped is still listed and dropped again.
func Drop(ctx context.Context, store storage.Store, id string) (files int, bytes int64, err error) {
	if !IsID(id) {
		return 0, 0, fmt.Errorf("%q is not an overlay id", id)
	}
	view := Store(store, id)
	for _, dir := range layoutDirs {
		infos, err := view.List(ctx, dir)
		if err != nil {
			return files, bytes, err
		}
		for _, info := range infos {
			if err := view.Delete(ctx, info.Name); err != nil {
				return files, bytes, err
			}
			files++
			bytes += info.Size
		}
	}
	return files, bytes, store.Delete(ctx, recordName(id))
}
