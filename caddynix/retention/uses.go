package retention

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
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

// namesOf lists the names of objects.
func namesOf(objects []storage.Info) []string {
	names := make([]string, len(objects))
	for i, o := range objects {
		names[i] = o.Name
	}
	return names
}
