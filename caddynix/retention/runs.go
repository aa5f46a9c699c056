package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"regexp"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// The CI runs that pushed into the cache are kept in its storage too, one
// object per run, retention/runs/<escaped repository>@<run id>.json,
// written when a job of the run finishes: which runs retention keeps, and
// who pushed a path, then outlive the index.
const runsDir = "retention/runs"

// maxRunRecordSize bounds a run record: a run that pushed 100,000 paths
// takes about 4 MB.
const maxRunRecordSize = 64 << 20

// runID is what a run id may be in an object name; Gitea's are numbers.
var runID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// runObject is the name of a run's record, or "" for a run whose id cannot
// name one.
func runObject(job *index.Job) string {
	if job.Repository == "" || !runID.MatchString(job.RunID) {
		return ""
	}
	return path.Join(runsDir, url.PathEscape(job.Repository)+"@"+job.RunID+".json")
}

// saveRun writes the index's record of job's run to the storage.
func SaveRun(ctx context.Context, store storage.Store, idx *index.Index, job *index.Job) error {
	name := runObject(job)
	if name == "" {
		return nil
	}
	run, err := idx.Run(job)
	if err != nil || run == nil {
		return err
	}
	data, err := json.Marshal(run)
	if err != nil {
		return err
	}
	return storage.WriteAll(ctx, store, name, data)
}

// forgetRuns deletes the records of runs retention will never keep again.
func (c *Collector) forgetRuns(ctx context.Context, runs []*index.Run) error {
	for _, run := range runs {
		if name := runObject(&run.Job); name != "" {
			if err := c.store.Delete(ctx, name); err != nil {
				return fmt.Errorf("deleting the record of run %s of %s: %w", run.RunID, run.Repository, err)
			}
		}
	}
	return nil
}

// adoptRuns reads the run records in the storage into an index built anew.
func (c *Collector) adoptRuns(ctx context.Context) error {
	objects, err := c.store.List(ctx, runsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing the run records: %w", err)
	}
	var runs []*index.Run
	for _, o := range objects {
		data, err := storage.ReadAll(ctx, c.store, o.Name, maxRunRecordSize)
		if err != nil {
			return fmt.Errorf("reading the run record %s: %w", o.Name, err)
		}
		run := new(index.Run)
		if err := json.Unmarshal(data, run); err != nil || runObject(&run.Job) != o.Name {
			c.logger.Warn("ignoring a run record that is not one: remove it", zap.String("record", o.Name))
			continue
		}
		runs = append(runs, run)
	}
	return c.idx.AdoptRuns(runs)
}
