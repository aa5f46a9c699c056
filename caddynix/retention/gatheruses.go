package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

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
