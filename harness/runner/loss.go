package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/scenario"
)

// Kinds of findings the harness makes itself, when the guest stops
// answering without a kernel report that says why.
const (
	kindHang     = "hang"            // no reply in time, QEMU still running
	kindNoOutput = "no output"       // ... and the console silent meanwhile
	kindLost     = "lost connection" // SSH dropped, QEMU still running
	kindExited   = "QEMU exited"     // QEMU ended with no kernel report
)

// settle waits a moment for QEMU to finish printing (a panic ends it at
// once) before the console is read for the reason a guest went away.
const settle = 2 * time.Second

// sessionLost reports why the guest went away during a unit: the kernel
// findings the console holds since the unit began, or a finding of the
// harness's own. A kernel fault, a hang or no output fails the unit; a lost
// connection or QEMU exiting with nothing from the kernel is an error, as
// the harness cannot tell who is at fault.
func (u *unit) sessionLost(cause error, findingsAt int) {
	select {
	case <-u.s.vm.Exited():
	case <-time.After(settle):
	}
	u.r.scanConsole(u.s)
	var kernel []string
	for _, f := range u.r.res.Findings[findingsAt:] {
		kernel = append(kernel, f.Kind+": "+f.Title)
	}
	status := report.Fail
	var own *report.Finding
	switch {
	case len(kernel) > 0:
	case errors.Is(cause, errNoReply) && u.s.vm.Alive() == nil:
		kind, title := kindHang, "guest stopped answering"
		if u.consoleSilent() {
			kind, title = kindNoOutput, "no output from the guest"
		}
		own = &report.Finding{Kind: kind, Title: title}
	case u.s.vm.Alive() != nil:
		status = report.Error
		own = &report.Finding{Kind: kindExited, Title: "QEMU exited without a kernel report"}
	default:
		status = report.Error
		own = &report.Finding{Kind: kindLost, Title: "lost connection to the guest"}
	}
	if own != nil {
		own.Scenario, own.Mode, own.Step = u.sc.Name, u.mode.name, u.step
		own.Context = fmt.Sprintf("%v\n%s", cause, u.s.vm.Console().Tail(20))
		u.r.res.Findings = append(u.r.res.Findings, *own)
		kernel = []string{own.Kind + ": " + own.Title}
	}
	u.r.res.Checks = append(u.r.res.Checks, report.Check{Scenario: u.sc.Name, Mode: u.mode.name, Step: u.step,
		Name: "guest_alive", Status: status, Expected: "the guest answers", Observed: kernel,
		Detail: fmt.Sprintf("%v\nconsole %s, last lines:\n%s", cause, u.s.console, u.s.vm.Console().Tail(20))})
}

// consoleSilent reports whether the console printed nothing since the
// current step began but the step's own marker.
func (u *unit) consoleSilent() bool {
	text := u.s.vm.Console().String()
	if u.consoleAt > len(text) {
		return true
	}
	for _, line := range strings.Split(text[u.consoleAt:], "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.Contains(line, markPrefix) {
			return false
		}
	}
	return true
}

// fault runs a fault step, then asks the guest whether it is still there.
func (u *unit) fault(ctx context.Context, kind string) error {
	switch kind {
	case "kill-qemu":
		u.mark() // the step's console position; QEMU goes before a marker could show
		if err := u.s.vm.Signal(); err != nil {
			return err
		}
	case "kill-ssh":
		if err := u.marked(ctx, "kill-ssh"); err != nil {
			return u.lost(err)
		}
	case "block":
		// The hung-task detector's default is 120s; make it report the
		// blocked step within the step timeout.
		if _, err := u.r.guest(ctx, u.s, "write /proc/sys/kernel/hung_task_timeout_secs 3"); err != nil {
			return u.lost(err)
		}
		fallthrough
	default:
		obs, err := u.probeStep(ctx, "fault "+kind)
		if obs == nil {
			return err
		}
	}
	_, err := u.r.guest(ctx, u.s, "read /proc/buddyinfo")
	return u.lost(err)
}

// bootFailed turns a failed boot into results: a kernel report on the
// console fails the run (the kernel under test broke), anything else is an
// error of the harness.
func (r *run) bootFailed(sc *scenario.Scenario, m mode, err error) error {
	if len(r.res.Findings) == 0 || !kernelFinding(r.res.Findings[len(r.res.Findings)-1]) {
		return err
	}
	var titles []string
	for _, f := range r.res.Findings {
		titles = append(titles, f.Kind+": "+f.Title)
	}
	r.res.Checks = append(r.res.Checks, report.Check{Scenario: sc.Name, Mode: m.name, Step: "boot",
		Name: "guest_boots", Status: report.Fail, Expected: "the guest answers SSH", Observed: titles,
		Detail: err.Error()})
	return nil
}

func kernelFinding(f report.Finding) bool {
	switch f.Kind {
	case kindHang, kindNoOutput, kindLost, kindExited:
		return false
	}
	return true
}
