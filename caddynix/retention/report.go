package retention

import (
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

// Report says what a collection did, or with dryRun would do.
type Report struct {
	DryRun bool `json:"dry_run,omitempty"`
	// Paths is how many paths the cache held before.
	Paths int `json:"paths"`
	// Deleted are the store paths deleted: for a collection, the first
	// listedDeletions of them.
	Deleted []string `json:"deleted"`
	// DeletedPaths counts the store paths deleted.
	DeletedPaths int `json:"deleted_paths"`
	// Nars is how many NAR files were deleted, orphans included.
	Nars int `json:"nars_deleted"`
	// Orphans are NAR files no narinfo named, older than min_age.
	Orphans []string `json:"orphans_deleted,omitempty"`
	// Overlays are the overlays dropped whole (repository@ref).
	Overlays   []string `json:"overlays_dropped,omitempty"`
	FreedBytes int64    `json:"freed_bytes"`
	SizeBefore int64    `json:"size_before"`
	SizeAfter  int64    `json:"size_after"`
	// Protected is the size of pinned closures, closures of kept CI runs
	// and paths younger than min_age.
	Protected int64 `json:"protected_bytes"`
	MaxSize   int64 `json:"max_size,omitempty"`
	// KeptByUploads counts paths planned for deletion that an upload
	// needed meanwhile, and that were kept.
	KeptByUploads int                  `json:"kept_by_uploads,omitempty"`
	Reconciled    index.ReconcileStats `json:"reconciled"`
	Duration      time.Duration        `json:"duration_ns"`

	// listAll lists every deleted path in Deleted, as the deletion of one
	// path's closure needs; a collection lists the first listedDeletions.
	listAll bool
}

// listedDeletions is how many deleted store paths a collection's report
// lists: a collection of a large cache deletes hundreds of thousands, and
// the list would take more memory than the collection itself.
const listedDeletions = 1000

// noteDeleted counts a deleted store path, and lists it while the report
// lists deletions.
func (r *Report) noteDeleted(storePath string) {
	r.DeletedPaths++
	if r.listAll || len(r.Deleted) < listedDeletions {
		r.Deleted = append(r.Deleted, storePath)
	}
}
