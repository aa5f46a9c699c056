package index

import bolt "go.etcd.io/bbolt"

// releaseEvery is how many bytes of records a read of a whole bucket
// passes between releases of the pages it read (releaseMapped): what it
// keeps resident of the index at most, besides the tree's upper pages.
var releaseEvery = 16 << 20

// scan calls fn with every key and value of the bucket name, as
// bbolt.Bucket.ForEach does, releasing the pages read as it goes.
func scan(tx *bolt.Tx, name []byte, fn func(k, v []byte) error) error {
	defer releaseMapped(tx)
	read := 0
	return tx.Bucket(name).ForEach(func(k, v []byte) error {
		if read += len(k) + len(v); read >= releaseEvery {
			releaseMapped(tx)
			read = 0
		}
		return fn(k, v)
	})
}

// releaseAfterWrites releases the pages that write transactions read,
// once they have written releaseEvery bytes of pages since the last time:
// a collection's deletions and a reindex's records land all over the
// file, and each page a transaction changes it first reads. It opens a
// read transaction of its own, during which the file is not remapped.
func (x *Index) releaseAfterWrites() {
	stats := x.db.Stats()
	written, last := stats.TxStats.GetWrite(), x.releasedAtWrite.Load()
	// After a compaction the counts start again, with the new file.
	if written >= last && (written-last)*int64(x.db.Info().PageSize) < int64(releaseEvery) {
		return
	}
	if !x.releasedAtWrite.CompareAndSwap(last, written) {
		return // another writer is releasing them
	}
	_ = x.db.View(func(tx *bolt.Tx) error {
		releaseMapped(tx)
		return nil
	})
}

// write runs fn in a read-write transaction of its own, committed alone,
// for writes too large to wait in a group (see update).
func (x *Index) write(fn func(*bolt.Tx) error) error {
	defer x.releaseAfterWrites()
	return x.db.Update(fn)
}
