package caddyrunner

// How a task becomes an act run follows Gitea's own runner
// (gitea.com/gitea/runner, internal/app/run, MIT licensed).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"gitea.com/gitea/runner/act/common"
	"gitea.com/gitea/runner/act/model"
	"gitea.com/gitea/runner/act/runner"
	"github.com/moby/moby/api/types/container"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
)

// runTask runs one task to the end and reports it, whatever happens: the
// final report goes out even when the job was cancelled or panicked.
func (d *daemon) runTask(ctx context.Context, client runnerv1connect.RunnerServiceClient, task *runnerv1.Task) {
	s := d.settings()
	logger := d.logger().With(zap.Int64("task", task.Id),
		zap.String("repository", task.Context.GetFields()["repository"].GetStringValue()),
		zap.String("job", task.Context.GetFields()["job"].GetStringValue()))
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	rep := newReporter(ctx, cancel, client, task, logger)
	go rep.run()
	runErr := d.execute(ctx, task, s, rep)
	lastWords := ""
	if runErr != nil {
		lastWords = runErr.Error()
		if ctx.Err() == context.DeadlineExceeded {
			lastWords = fmt.Sprintf("the job ran longer than the runner's timeout (%s): %v", s.timeout, runErr)
		}
	}
	if err := rep.close(lastWords); err != nil {
		logger.Error("the final report did not reach Gitea", zap.Error(err))
	}
	result := strings.ToLower(strings.TrimPrefix(rep.result().String(), "RESULT_"))
	d.recordResult(task.Id, result)
	jobDuration.Observe(time.Since(start).Seconds())
	tasksTotal.WithLabelValues(result).Inc()
	logger.Info("task finished", zap.String("result", result), zap.Duration("duration", time.Since(start)))
}

// execute plans the task's job and runs it with act.
func (d *daemon) execute(ctx context.Context, task *runnerv1.Task, s *settings, rep *reporter) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the runner panicked while running the job: %v", p)
			d.logger().Error("job panicked", zap.Int64("task", task.Id), zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	fields := task.Context.GetFields()
	rep.logf("%s received task %d of job %s, triggered by %s", s.name, task.Id,
		fields["job"].GetStringValue(), fields["event_name"].GetStringValue())

	workflow, jobID, err := taskWorkflow(task)
	if err != nil {
		return err
	}
	plan, err := model.CombineWorkflowPlanner(workflow).PlanJob(jobID)
	if err != nil {
		return fmt.Errorf("planning job %s: %w", jobID, err)
	}
	job := workflow.GetJob(jobID)
	rep.resetSteps(len(job.Steps))

	preset := githubContext(task)

	if why := untrustedRefusal(task, s, job.RunsOn()); why != "" {
		return fmt.Errorf("refusing to run the job: %s", why)
	}
	env := d.jobEnv(s)
	if url := fields["actions_id_token_request_url"].GetStringValue(); url != "" {
		env["ACTIONS_ID_TOKEN_REQUEST_URL"] = url
		env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = fields["actions_id_token_request_token"].GetStringValue()
	}
	runtimeToken := fields["gitea_runtime_token"].GetStringValue()
	if runtimeToken == "" {
		runtimeToken = preset.Token
	}
	env["ACTIONS_RUNTIME_TOKEN"] = runtimeToken

	eventJSON, err := json.Marshal(preset.Event)
	if err != nil {
		return fmt.Errorf("encoding the event: %w", err)
	}
	maxLifetime := s.timeout
	if deadline, ok := ctx.Deadline(); ok {
		maxLifetime = time.Until(deadline)
	}
	defaultActions := fields["gitea_default_actions_url"].GetStringValue()

	options, validVolumes := s.container.Options, s.container.ValidVolumes
	var push *autoPush
	if s.nixCache != "" {
		handoff, err := d.giveCacheAccess(task, s, job.RunsOn(), rep)
		if err != nil {
			return err
		}
		// Revoked as soon as the job ends, whatever its outcome.
		defer func() { handoff.release(err == nil) }()
		env["NIX_CONFIG"] = joinNixConfig(env["NIX_CONFIG"], handoff.nixConfig)
		maps.Copy(env, handoff.env)
		if handoff.mount != "" {
			options = strings.TrimSpace(options + " --volume " + handoff.mount + ":" + jobNetrcPath + ":ro")
			validVolumes = append(slices.Clone(validVolumes), handoff.mount)
		}
		if push = handoff.autoPush; push != nil {
			if push.jobDir != push.hostDir {
				options = strings.TrimSpace(options + " --volume " + push.hostDir + ":" + push.jobDir)
				validVolumes = append(slices.Clone(validVolumes), push.hostDir)
			}
			if push.watched {
				options = strings.TrimSpace(options + " --volume " + push.agentPath + ":" + jobAgentPath + ":ro")
				validVolumes = append(slices.Clone(validVolumes), push.agentPath)
			} else {
				// After the steps Gitea knows, so its lines go to the
				// job's closing section.
				job.Steps = append(job.Steps, push.step())
			}
		}
	}

	if s.actionsCache != "" {
		cacheEnv, release, err := giveActionsCache(task, s, runtimeToken)
		if err != nil {
			return err
		}
		defer release()
		maps.Copy(env, cacheEnv)
	}

	if s.labels.pickPlatform(job.RunsOn()) == hostPlatform {
		hideCaddyEnv(env)
	}

	clonesDir := actionClonesDir(s.actionCacheDir, d.instance, defaultActions)
	// A watched store is read once more after the job's steps: act then
	// leaves the job's containers to the runner.
	leaveContainers := push != nil && push.watched
	cfg := &runner.Config{
		Workdir:               "/" + strings.Trim(s.workdirParent, "/") + "/" + preset.Repository,
		ReuseContainers:       leaveContainers,
		ForcePull:             s.container.ForcePull,
		LogOutput:             true,
		Env:                   env,
		Secrets:               task.Secrets,
		Vars:                  task.Vars,
		GitHubInstance:        d.instance,
		AutoRemove:            true,
		NoSkipCheckout:        true,
		PresetGitHubContext:   preset,
		EventJSON:             string(eventJSON),
		ContainerNamePrefix:   d.containerNamePrefix(task.Id),
		ContainerMaxLifetime:  maxLifetime,
		CleanWorkdir:          true,
		ContainerNetworkMode:  container.NetworkMode(s.container.Network),
		ContainerOptions:      options,
		ContainerDaemonSocket: s.container.DockerHost,
		Privileged:            s.container.Privileged,
		DefaultActionInstance: defaultActions,
		PlatformPicker:        s.labels.pickPlatform,
		ValidVolumes:          validVolumes,
		ActionCacheDir:        clonesDir,
	}
	// Where act clones remote actions from, by its own rule.
	offline, notes := keptClonesOnly(ctx, job.Steps, cfg.DefaultActionURL(), clonesDir)
	for _, note := range notes {
		rep.logf("%s", note)
	}
	cfg.ActionOfflineMode = offline
	r, err := runner.New(cfg)
	if err != nil {
		return fmt.Errorf("setting up the job: %w", err)
	}
	executor := r.NewPlanExecutor(plan)
	rep.logf("workflow prepared")

	ctx = common.WithLoggerHook(ctx, rep)
	// Job output goes to Gitea through the hook, not into Caddy's log.
	ctx = runner.WithJobLoggerFactory(ctx, discardJobLogger{})
	if leaveContainers {
		defer removeJobContainers(cfg.ContainerNamePrefix, d.logger())
	}
	if push != nil {
		if err := push.startWatch(ctx, d.logger()); err != nil {
			rep.logf("auto push to %s: %v", push.cacheURL, err)
		}
	}
	execErr := executor(ctx)
	rep.setOutputs(job.Outputs)
	if push != nil && !push.report(rep, preset.Repository) && push.required && push.watched {
		rep.failJob()
	}
	return execErr
}

// githubContext is the github context of a task, as Gitea sent it: the
// token is the job's GITEA_TOKEN or GITHUB_TOKEN secret when it has one,
// as with Gitea's runner.
func githubContext(task *runnerv1.Task) *model.GithubContext {
	fields := task.GetContext().GetFields()
	str := func(name string) string { return fields[name].GetStringValue() }
	preset := &model.GithubContext{
		Event:           fields["event"].GetStructValue().AsMap(),
		RunID:           str("run_id"),
		RunNumber:       str("run_number"),
		RunAttempt:      str("run_attempt"),
		Actor:           str("actor"),
		Repository:      str("repository"),
		EventName:       str("event_name"),
		Sha:             str("sha"),
		Ref:             str("ref"),
		RefName:         str("ref_name"),
		RefType:         str("ref_type"),
		HeadRef:         str("head_ref"),
		BaseRef:         str("base_ref"),
		Token:           str("token"),
		RepositoryOwner: str("repository_owner"),
		RetentionDays:   str("retention_days"),
	}
	if t := task.Secrets["GITEA_TOKEN"]; t != "" {
		preset.Token = t
	} else if t := task.Secrets["GITHUB_TOKEN"]; t != "" {
		preset.Token = t
	}
	return preset
}

// jobEnv is the environment every job gets: the configured env, then the
// variables that tell actions where Gitea's services are.
func (d *daemon) jobEnv(s *settings) map[string]string {
	env := make(map[string]string, len(s.env)+8)
	maps.Copy(env, s.env)
	env["ACTIONS_RUNTIME_URL"] = d.instance + "/api/actions_pipeline/"
	env["ACTIONS_RESULTS_URL"] = d.instance
	env["GITEA_ACTIONS"] = "true"
	env["GITEA_ACTIONS_RUNNER_VERSION"] = runnerVersion
	return env
}

// discardJobLogger gives act job loggers that write nowhere: the reporter
// hook still sees every entry.
type discardJobLogger struct{}

func (discardJobLogger) WithJobLogger() *logrus.Logger {
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	logger.SetLevel(logrus.TraceLevel)
	return logger
}

// containerNamePrefix names a task's containers. Task ids are only unique
// within one Gitea, and act removes a container of the same name before it
// creates its own: runners of two Gitea instances on one Docker daemon
// would remove each other's job containers. The runner's UUID tells them
// apart.
func (d *daemon) containerNamePrefix(taskID int64) string {
	prefix := fmt.Sprintf("GITEA-ACTIONS-TASK-%d", taskID)
	if id := d.currentIdentity(); id != nil {
		short := strings.ReplaceAll(id.UUID, "-", "")
		prefix += "-RUNNER-" + short[:min(8, len(short))]
	}
	return prefix
}
