package caddyrunner

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"gitea.com/gitea/runner/act/model"
	"go.yaml.in/yaml/v4"
)

// taskWorkflow parses a task's single-job workflow and adds a stub job for
// each job it needs, carrying that job's outputs and result, so that
// `needs.<job>.outputs` resolves.
func taskWorkflow(task *runnerv1.Task) (*model.Workflow, string, error) {
	workflow, err := model.ReadWorkflow(bytes.NewReader(task.WorkflowPayload))
	if err != nil {
		return nil, "", fmt.Errorf("parsing the task's workflow: %w", err)
	}
	ids := workflow.GetJobIDs()
	if len(ids) != 1 {
		return nil, "", fmt.Errorf("the task's workflow has %d jobs (%v), want exactly one", len(ids), ids)
	}
	jobID := ids[0]
	needs := make([]string, 0, len(task.Needs))
	for id, need := range task.Needs {
		needs = append(needs, id)
		workflow.Jobs[id] = &model.Job{
			Outputs: need.Outputs,
			Result:  strings.ToLower(strings.TrimPrefix(need.Result.String(), "RESULT_")),
		}
	}
	slices.Sort(needs)
	raw := yaml.Node{Kind: yaml.SequenceNode}
	for _, id := range needs {
		raw.Content = append(raw.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: id})
	}
	workflow.Jobs[jobID].RawNeeds = raw
	return workflow, jobID, nil
}
