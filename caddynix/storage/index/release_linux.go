package index

import (
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// releaseMapped drops the index file's pages from the process's memory
// map, so that a read of the whole index, which every collection and
// reindex makes, does not leave it all resident. The pages stay in the
// page cache, and one read again is mapped back from there: bbolt maps the
// file read-only and shared, and never writes a page a transaction may
// still read, so nothing is lost. bbolt remaps the file only in a write
// transaction's commit, once no read transaction is open, so the mapping
// tx sees is the one released, during a read transaction or a write
// transaction's function.
func releaseMapped(tx *bolt.Tx) {
	// Advice only: a failure leaves the pages mapped, as they were.
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, tx.DB().Info().Data, uintptr(tx.Size()), unix.MADV_DONTNEED)
}
