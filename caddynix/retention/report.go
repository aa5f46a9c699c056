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
	// Deleted are the store paths deleted.
	Deleted []string `json:"deleted"`
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
}
