package index

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// committer commits the index's frequent small writes (a push recorded, a
// job started or finished) in groups, without waiting for company: a write
// that finds no commit under way is committed at once, and writes that
// come while one is on its way to disk are committed together after it,
// with one sync for all of them. bbolt's own Batch waits MaxBatchDelay
// (10 ms) before every commit, which a lone writer, such as nix copy
// uploading a chain of paths one after another, pays on every path.
type committer struct {
	mu      sync.Mutex
	queue   []*write
	leading bool // a writer is committing the queue
}

// write is one caller's transaction function and where its outcome goes.
type write struct {
	fn     func(*bolt.Tx) error
	result chan error // buffered: the committer never waits on it
}

// errLead, sent to a waiting writer, tells it to commit the queue next.
var errLead = errors.New("commit the queue")

// update runs fn in a read-write transaction, committed with any writes
// that wait alongside it. fn may run more than once (when another write
// in its group fails, the group is committed again without it), so it
// must not keep state outside the transaction between runs.
func (x *Index) update(fn func(*bolt.Tx) error) error {
	w := &write{fn: fn, result: make(chan error, 1)}
	c := &x.commits
	c.mu.Lock()
	c.queue = append(c.queue, w)
	if c.leading {
		c.mu.Unlock()
		if err := <-w.result; !errors.Is(err, errLead) {
			return err
		}
		c.mu.Lock()
	}
	c.leading = true
	group := c.queue
	c.queue = nil
	c.mu.Unlock()

	x.commitGroup(group)

	c.mu.Lock()
	if len(c.queue) > 0 {
		c.queue[0].result <- errLead
	} else {
		c.leading = false
	}
	c.mu.Unlock()
	return <-w.result
}

// commitGroup commits the writes of group in one transaction and tells
// each its outcome. A write whose function fails would roll back the
// others, so it is run alone for its own error and the rest are committed
// again without it.
func (x *Index) commitGroup(group []*write) {
	defer x.releaseMappedPages()
	for len(group) > 0 {
		failed := -1
		err := x.db.Update(func(tx *bolt.Tx) error {
			for i, w := range group {
				if err := callSafely(w.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, w := range group {
				w.result <- err
			}
			return
		}
		w := group[failed]
		w.result <- x.db.Update(func(tx *bolt.Tx) error { return callSafely(w.fn, tx) })
		group = slices.Delete(group, failed, failed+1)
	}
}

// callSafely turns a panic in fn into its error, so that one bad write
// cannot leave the others waiting for a commit that never comes.
func callSafely(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("index write panicked: %v", p)
		}
	}()
	return fn(tx)
}
