package index

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Job is the CI job that uploaded a path with its per-job credential.
type Job struct {
	Repository string `json:"repository"`
	RunID      string `json:"run_id"`
	RunURL     string `json:"run_url,omitempty"`
	JobName    string `json:"job,omitempty"`
	Commit     string `json:"commit,omitempty"`
	Ref        string `json:"ref,omitempty"`
	Event      string `json:"event,omitempty"`
	// DefaultBranch says the run was on the repository's default branch
	// (a push, schedule or manual run there).
	DefaultBranch bool `json:"default_branch,omitempty"`
	// PullRequest says the run was for a pull request.
	PullRequest bool `json:"pull_request,omitempty"`
}

// Run is what the index knows of one CI run that pushed into the cache:
// its jobs' outcomes and the paths they pushed.
type Run struct {
	Job
	// Keep is how many successful default-branch runs of the repository
	// the runner asked to keep when this run started.
	Keep      int       `json:"keep,omitempty"`
	Jobs      int       `json:"jobs"`
	Succeeded int       `json:"succeeded"`
	Failed    int       `json:"failed"`
	Paths     []string  `json:"paths,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Successful reports whether every job of the run that had cache access
// finished and succeeded.
func (r *Run) Successful() bool {
	return r.Jobs > 0 && r.Failed == 0 && r.Succeeded == r.Jobs
}

// runKey orders a repository's runs by run id, numerically when the ids
// are numbers (as Gitea's are).
func runKey(job *Job) []byte {
	id := job.RunID
	if n, err := strconv.ParseUint(id, 10, 64); err == nil {
		id = fmt.Sprintf("%020d", n)
	}
	return []byte(job.Repository + "\x00" + id)
}

func getRun(b *bolt.Bucket, key []byte) (*Run, error) {
	data := b.Get(key)
	if data == nil {
		return nil, nil
	}
	run := new(Run)
	if err := json.Unmarshal(data, run); err != nil {
		return nil, fmt.Errorf("index record of run %q: %w", key, err)
	}
	return run, nil
}

// updateRun applies change to the run of job, creating its record.
func (x *Index) updateRun(tx *bolt.Tx, job *Job, at time.Time, change func(*Run)) error {
	b := tx.Bucket(runsBucket)
	key := runKey(job)
	run, err := getRun(b, key)
	if err != nil {
		return err
	}
	if run == nil {
		run = &Run{Job: *job}
	}
	change(run)
	run.UpdatedAt = at
	data, err := json.Marshal(run)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

// StartJob records that a job of the run got cache access, and how many
// successful default-branch runs of its repository to keep.
func (x *Index) StartJob(job *Job, keep int, at time.Time) error {
	return x.update(func(tx *bolt.Tx) error {
		return x.updateRun(tx, job, at, func(r *Run) {
			r.Jobs++
			r.Keep = keep
		})
	})
}

// FinishJob records a job's outcome.
func (x *Index) FinishJob(job *Job, succeeded bool, at time.Time) error {
	return x.update(func(tx *bolt.Tx) error {
		return x.updateRun(tx, job, at, func(r *Run) {
			if succeeded {
				r.Succeeded++
			} else {
				r.Failed++
			}
		})
	})
}

func addRunPath(tx *bolt.Tx, job *Job, hash string, at time.Time) error {
	return (*Index)(nil).updateRun(tx, job, at, func(r *Run) {
		if !slices.Contains(r.Paths, hash) {
			r.Paths = append(r.Paths, hash)
		}
	})
}

// KeptRuns returns, for every repository, its last Keep successful
// default-branch runs, newest first, and forgets (and returns) the runs
// older than those, which can no longer become kept.
func (x *Index) KeptRuns() (kept, forgotten []*Run, err error) {
	err = x.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(runsBucket)
		byRepo := map[string][]*Run{}
		keys := map[*Run][]byte{}
		var repos []string
		err := b.ForEach(func(k, v []byte) error {
			run := new(Run)
			if err := json.Unmarshal(v, run); err != nil {
				return fmt.Errorf("index record of run %q: %w", k, err)
			}
			repo, _, _ := strings.Cut(string(k), "\x00")
			if byRepo[repo] == nil {
				repos = append(repos, repo)
			}
			byRepo[repo] = append(byRepo[repo], run)
			keys[run] = slices.Clone(k)
			return nil
		})
		if err != nil {
			return err
		}
		for _, repo := range repos {
			runs := byRepo[repo]
			// Keys sort by run id: the newest run is the last.
			keep := runs[len(runs)-1].Keep
			found := 0
			for i := len(runs) - 1; i >= 0; i-- {
				run := runs[i]
				switch {
				case found < keep && run.DefaultBranch && run.Successful():
					kept = append(kept, run)
					found++
				case found >= keep:
					// Older than the kept ones: it can never be kept again.
					if err := b.Delete(keys[run]); err != nil {
						return err
					}
					forgotten = append(forgotten, run)
				}
			}
		}
		return nil
	})
	return kept, forgotten, err
}

// Run returns the record of job's run, or nil.
func (x *Index) Run(job *Job) (*Run, error) {
	var run *Run
	err := x.db.View(func(tx *bolt.Tx) error {
		var err error
		run, err = getRun(tx.Bucket(runsBucket), runKey(job))
		return err
	})
	return run, err
}
