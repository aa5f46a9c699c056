package retention

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// On storage that several nodes share, a node's index knows only the
// paths that node served. So that retention deletes the least recently
// used paths of the whole cache, each node writes the use times it notes
// into the storage, and the collection that holds the lease merges them
// into its index and folds them into one record, which the next
// collection, on whichever node, starts from.
const (
	// UsesDir holds one record per flush of a node's use times.
	UsesDir = "retention/used"
	// UsesName is the record the collections fold them into.
	UsesName = "retention/used.json"
	// maxUsesSize bounds a record read into memory: about five million
	// paths.
	maxUsesSize = 256 << 20
)

// PublishUses writes the use times this node noted, for the collections
// of every node sharing the storage.
func PublishUses(ctx context.Context, store storage.Store, served map[string]time.Time) error {
	if _, shared := store.(storage.Leaser); !shared || len(served) == 0 {
		return nil
	}
	random := make([]byte, 4)
	_, _ = rand.Read(random)
	name := fmt.Sprintf("%s/%020d-%s.json", UsesDir, time.Now().UnixNano(), hex.EncodeToString(random))
	if err := storage.WriteAll(ctx, store, name, encodeUses(served)); err != nil {
		return fmt.Errorf("writing use times for the other nodes: %w", err)
	}
	return nil
}

// encodeUses is a record of use times: hash part → Unix seconds.
func encodeUses(served map[string]time.Time) []byte {
	secs := make(map[string]int64, len(served))
	for hash, at := range served {
		secs[hash] = at.Unix()
	}
	data, _ := json.Marshal(secs)
	return data
}

// gatherUses merges the use times every node wrote into the index. With
// consume, which needs the collection lease, it folds them into one record
// and deletes the ones it read.
func (c *Collector) gatherUses(ctx context.Context, consume bool) error {
	if _, shared := c.store.(storage.Leaser); !shared {
		return nil
	}
	records, err := c.store.List(ctx, UsesDir)
	if err != nil {
		return fmt.Errorf("listing the use times of other nodes: %w", err)
	}
	merged := map[string]time.Time{}
	for _, name := range append([]string{UsesName}, namesOf(records)...) {
		data, err := storage.ReadAll(ctx, c.store, name, maxUsesSize)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading use times: %w", err)
		}
		var secs map[string]int64
		if err := json.Unmarshal(data, &secs); err != nil || int64(len(data)) > maxUsesSize {
			c.logger.Warn("skipping an unreadable record of use times", zap.String("name", name), zap.Error(err))
			continue
		}
		for hash, sec := range secs {
			if at := time.Unix(sec, 0); at.After(merged[hash]) {
				merged[hash] = at
			}
		}
	}
	if err := c.idx.MarkServed(merged); err != nil {
		return err
	}
	if !consume || len(records) == 0 {
		return nil
	}
	served, err := c.idx.Served()
	if err != nil {
		return err
	}
	// The folded record is written before the records in it are deleted:
	// a collection that dies in between leaves records read twice, which
	// changes nothing.
	if err := storage.WriteAll(ctx, c.store, UsesName, encodeUses(served)); err != nil {
		return fmt.Errorf("writing the use times of every node: %w", err)
	}
	for _, record := range records {
		if err := c.store.Delete(ctx, record.Name); err != nil {
			return fmt.Errorf("deleting a record of use times folded into %s: %w", UsesName, err)
		}
	}
	return nil
}

// namesOf lists the names of objects.
func namesOf(objects []storage.Info) []string {
	names := make([]string, len(objects))
	for i, o := range objects {
		names[i] = o.Name
	}
	return names
}
