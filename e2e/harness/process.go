package harness

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a program running in the background, in a process group of its
// own, with its output appended to a log file.
type Process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // how it exited; valid once exited is closed
}

// StartProcess starts cmd with its output appended to logPath.
func StartProcess(name string, cmd *exec.Cmd, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited returns an error, which makes Eventually give up, once the process
// has ended; nil while it runs.
func (p *Process) Exited() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%w: %s exited: %v", errStop, p.name, p.err)
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits up to grace for the process to end, then
// kills its whole process group. It reports whether the process ended
// within grace.
func (p *Process) Stop(grace time.Duration) bool {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return true
	case <-time.After(grace):
		p.Kill()
		return false
	}
}

// Kill ends the whole process group at once with SIGKILL, as a crash would.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// Wait waits up to timeout for the process to end by itself, and returns
// how it ended; ok is false if it still runs.
func (p *Process) Wait(timeout time.Duration) (err error, ok bool) {
	select {
	case <-p.exited:
		return p.err, true
	case <-time.After(timeout):
		return nil, false
	}
}
