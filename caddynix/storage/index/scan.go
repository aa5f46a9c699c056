package index

import bolt "go.etcd.io/bbolt"

// releaseEvery is how many bytes of records a read of a whole bucket
// passes between releases of the pages it read (releaseMapped): what it
// keeps resident of the index at most, besides the tree's upper pages.
const releaseEvery = 16 << 20

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

// bucketStats is the bucket name's bbolt.Bucket.Stats, which reads every
// page of it, with those pages released after.
func bucketStats(tx *bolt.Tx, name []byte) bolt.BucketStats {
	defer releaseMapped(tx)
	return tx.Bucket(name).Stats()
}
