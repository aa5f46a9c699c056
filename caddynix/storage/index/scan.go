package index

import (
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

// releaseEvery is about how much of the index file a read keeps mapped at
// most before it releases the pages (releaseMapped), besides the tree's
// upper pages.
var releaseEvery = 16 << 20

// mapGranule is the most of the file one page fault maps. Linux maps
// 64 KiB around a faulted page, whatever bbolt's MADV_RANDOM says, or the
// whole folio of the page cache that holds it, and a file's folios reach
// 2 MiB, aligned to their size in the file.
const mapGranule = 2 << 20

// scan calls fn with every key and value of the bucket name, as
// bbolt.Bucket.ForEach does, releasing the pages read as it goes: every
// time its keys have been in releaseEvery/mapGranule stretches of
// mapGranule of the file, all of which faults may have mapped.
func scan(tx *bolt.Tx, name []byte, fn func(k, v []byte) error) error {
	defer releaseMapped(tx)
	start := tx.DB().Info().Data
	stretch, stretches := ^uintptr(0), 0
	return tx.Bucket(name).ForEach(func(k, v []byte) error {
		if at := (uintptr(unsafe.Pointer(unsafe.SliceData(k))) - start) / mapGranule; at != stretch {
			stretch = at
			if stretches++; stretches*mapGranule > releaseEvery {
				releaseMapped(tx)
				stretches = 1
			}
		}
		return fn(k, v)
	})
}

// releaseMappedPages releases the pages of the index mapped now. Every
// write transaction calls it when it is done: the pages a transaction
// changes, it first reads, and a collection's deletions and a reindex's
// records land all over the file. It opens a read transaction of its own,
// during which the file is not remapped.
func (x *Index) releaseMappedPages() {
	_ = x.db.View(func(tx *bolt.Tx) error {
		releaseMapped(tx)
		return nil
	})
}

// touched counts the leaf pages, one per bucket, that tx read to look up
// or write one record, and releases the mapped pages every
// releaseEvery/mapGranule of them: each may fault in a stretch of the file
// of its own, and a reindex or a collection touches records all over it,
// many in one transaction.
func (x *Index) touched(tx *bolt.Tx, pages int64) {
	every := int64(max(1, releaseEvery/mapGranule))
	if after := x.touches.Add(pages); after/every != (after-pages)/every {
		releaseMapped(tx)
	}
}

// write runs fn in a read-write transaction of its own, committed alone,
// for writes too large to wait in a group (see update).
func (x *Index) write(fn func(*bolt.Tx) error) error {
	defer x.releaseMappedPages()
	return x.db.Update(fn)
}
