package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/pageman/pageman-harness/harness/findings"
	"github.com/pageman/pageman-harness/harness/ftrace"
	"github.com/pageman/pageman-harness/harness/guestssh"
	"github.com/pageman/pageman-harness/harness/probe"
	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/scenario"
	"github.com/pageman/pageman-harness/reference"
)

// mode is one way a scenario runs: the same steps with the module under
// test loaded or not, each against the model of that behaviour.
type mode struct {
	name      string
	behaviour reference.Behaviour
	load      bool // load the subject's module for this mode
}

// modes by the name a scenario gives them (scenario.Modes).
var modes = map[string]mode{
	"vanilla": {"vanilla", reference.Vanilla, false},
	"pageman": {"pageman", reference.Pageman, true},
}

// markPrefix starts every step marker the agent writes to the kernel log.
const markPrefix = "pageman-harness: step "

// unit is one scenario run in one mode.
type unit struct {
	r       *run
	s       *session
	sc      *scenario.Scenario
	mode    mode
	model   *reference.Model
	objects map[string]*object
	order   []string // live object names in allocation order
	// failedAsPredicted names the objects whose allocation failed, and
	// whether the model predicted that.
	failedAsPredicted map[string]bool
	freed             map[string]int     // probe handles of freed objects
	loaded            bool               // the module under test is loaded
	consoleAt         int                // console length when the current step began
	step              string             // the current step's label
	counters          reference.Counters // the model's counters after the last step
	// Net free-page change over the unit, as the model predicts and as the
	// steps measured it.
	netExpected, netObserved int64
}

// object is a live allocation of the scenario.
type object struct {
	handle int    // the probe's handle
	model  int    // the model's handle; -1 if the model predicted failure
	pfn    uint64 // head page frame
	order  int    // get_order() of its size
	ptr    string // hashed pointer of its kmalloc event, to find its kfree
	slab   bool   // served by a slab cache: its page is not its own
	held   []bool // pages of its block it holds, from its alloc step's events
}

// errSessionLost marks an error after which the guest cannot go on.
var errSessionLost = errors.New("guest session lost")

// runUnit runs one scenario in one mode and reports whether the session
// is still usable.
func (r *run) runUnit(ctx context.Context, s *session, sc *scenario.Scenario, m mode) bool {
	u := &unit{r: r, s: s, sc: sc, mode: m, objects: map[string]*object{}, failedAsPredicted: map[string]bool{}, freed: map[string]int{}}
	var err error
	u.model, err = reference.New(reference.Config{PageSize: s.guest.PageSize, Orders: s.orders,
		KmallocMaxCacheSize: s.guest.KmallocMaxCacheSize}, m.behaviour)
	if err != nil {
		u.step = "setup"
		u.errorCheck("model", err)
		return true
	}
	findingsAt := len(r.res.Findings)
	err = u.run(ctx)
	switch {
	case ctx.Err() != nil:
		u.errorCheck("interrupted", ctx.Err())
		return false
	case errors.Is(err, errSessionLost):
		u.sessionLost(err, findingsAt)
		return false
	case err != nil:
		u.errorCheck("guest", err)
	}
	r.scanConsole(s)
	return true
}

func (u *unit) run(ctx context.Context) error {
	if u.mode.load {
		u.step = "load " + u.r.module
		if ok, err := u.load(ctx); !ok || err != nil {
			return err
		}
	}
	for i, st := range u.sc.Steps {
		u.step = fmt.Sprintf("%d %s", i+1, st)
		var err error
		switch st.Op {
		case scenario.Alloc:
			err = u.alloc(ctx, st)
		case scenario.Free:
			err = u.free(ctx, st.Object, st.Size)
		case scenario.Fault:
			err = u.fault(ctx, st.Fault)
		case scenario.LoadModule:
			_, err = u.load(ctx)
		case scenario.UnloadModule:
			err = u.unload(ctx)
		case scenario.Misuse:
			err = u.misuse(ctx, st)
		case scenario.Bench:
			err = u.bench(ctx, st)
		}
		if err != nil {
			return err
		}
	}
	// Objects the scenario left live are freed, and checked, like any other.
	for len(u.order) > 0 {
		name := u.order[0]
		u.step = "cleanup free " + name
		if err := u.free(ctx, name, scenario.Size{}); err != nil {
			return err
		}
	}
	u.step = "end"
	u.check("all_pages_back", u.netExpected, u.netObserved,
		"net change of free pages over all steps, each measured around its own request")
	if u.loaded {
		u.step = "unload " + u.r.module
		return u.unload(ctx)
	}
	return nil
}

// load inserts the module under test; from then on the model predicts
// Pageman's behaviour. It reports whether the module is loaded.
func (u *unit) load(ctx context.Context) (bool, error) {
	err := u.marked(ctx, "insmod /"+guestModuleDir+"/"+u.r.module+".ko")
	if err := u.lost(err); err != nil {
		return false, err
	}
	u.check("module_loaded", !u.loaded, err == nil, errText(err))
	if err == nil {
		u.loaded = true
		u.model.SetBehaviour(reference.Pageman)
	}
	return err == nil, nil
}

// unload removes the module under test. While fitted allocations are live
// it must refuse (each holds a reference on the module): the model says
// whether any are.
func (u *unit) unload(ctx context.Context) error {
	err := u.marked(ctx, "rmmod "+u.r.module)
	if err := u.lost(err); err != nil {
		return err
	}
	want := "unloaded"
	if u.model.Counters().Live > 0 {
		want = "refused: in use"
	}
	got := "unloaded"
	if err != nil {
		// delete_module() says EWOULDBLOCK (EAGAIN) for a module in use.
		got = "refused: " + err.Error()
		if strings.Contains(err.Error(), syscall.EAGAIN.Error()) || strings.Contains(err.Error(), syscall.EBUSY.Error()) {
			got = "refused: in use"
		}
	}
	u.check("module_unload", want, got, fmt.Sprintf("the model has %d fitted allocations live; rmmod: %v", u.model.Counters().Live, err))
	if err == nil {
		u.loaded = false
		u.model.SetBehaviour(reference.Vanilla)
	}
	return nil
}

// misuse sends a request the probe must refuse, and checks it did so
// cleanly: the right error, nothing in the kernel log.
func (u *unit) misuse(ctx context.Context, st scenario.Step) error {
	var request, want string
	switch st.Fault {
	case "zero-size":
		request, want = probe.Alloc(string(reference.Kmalloc), 0, reference.NoNode), "EINVAL"
	case "unknown-handle":
		request, want = probe.Free(unknownHandle, 0), "ENOENT"
	case "double-free":
		request, want = probe.Free(u.freed[st.Object], 0), "ENOENT"
	}
	obs, err := u.probeStep(ctx, request)
	if obs == nil {
		return err
	}
	u.check("status", want, errnoName(obs.Reply.Status), "")
	return nil
}

// bench times allocations and frees in the guest and records the cost.
func (u *unit) bench(ctx context.Context, st scenario.Step) error {
	size, ok := u.bytes(st.Size)
	if !ok {
		return nil
	}
	obs, err := u.probeStep(ctx, probe.Bench(string(st.Path), size, st.Count))
	if obs == nil {
		return err
	}
	u.check("status", "0", errnoName(obs.Reply.Status), "")
	if obs.Reply.Status == 0 && obs.Reply.BenchN > 0 {
		u.r.res.Measurements = append(u.r.res.Measurements, report.Measurement{Scenario: u.sc.Name, Mode: u.mode.name,
			Step: u.step, Path: string(st.Path), Size: size, Count: obs.Reply.BenchN,
			NsPerOp: float64(obs.Reply.BenchNs) / float64(obs.Reply.BenchN)})
	}
	return nil
}

// unknownHandle is a handle the probe never gives: a slot's generation
// that high is never reached.
const unknownHandle = 1 << 30

// alloc runs an allocation step.
func (u *unit) alloc(ctx context.Context, st scenario.Step) error {
	size, ok := u.bytes(st.Size)
	if !ok {
		return nil
	}
	want, perr := u.model.Alloc(st.Path, size, st.Node)
	wantStatus := "0"
	switch {
	case perr == nil:
	case errors.Is(perr, reference.ErrTooLarge):
		wantStatus = errnoName(-int(syscall.ENOMEM)) // the allocation must fail cleanly
	default:
		u.errorCheck("model", perr)
		return nil
	}
	obs, err := u.probeStep(ctx, probe.Alloc(string(st.Path), size, st.Node))
	if obs == nil {
		return err
	}
	u.check("status", wantStatus, errnoName(obs.Reply.Status), "")
	if obs.Reply.Status != 0 {
		u.failedAsPredicted[st.Object] = perr != nil
		if perr == nil {
			u.model.Discard(want.Handle) // keep the model in step with the kernel
			u.counters = u.model.Counters()
		}
		return nil
	}
	obj := &object{handle: obs.Reply.Handle, model: -1, pfn: obs.Reply.PFN, order: obs.Reply.Order}
	u.objects[st.Object] = obj
	u.order = append(u.order, st.Object)
	if perr != nil {
		return nil // allocated against the model: freed at cleanup, already failed
	}
	obj.model, obj.slab = want.Handle, want.Slab
	own := blockEvents(obs.events, obj, true, func(e ftrace.Event) bool {
		req, err := e.Uint("bytes_req")
		return e.Name == "kmalloc" && err == nil && req == size
	})
	u.checkEvents(want.Events(), own.events, obs.events)
	if !want.Slab {
		u.check("pages_kept", want.Kept, keptPages(own.events, obj.order), "2^order minus the pages freed inside the block during the step (mm_page_free)")
		if u.checkDelta(-int64(want.Kept), obs, own) {
			u.checkBuddyDelta(want, obs)
		}
		u.checkSUnreclaim(want.SUnreclaim, obs)
	}
	if kmalloc := own.matched; st.Path.IsKmalloc() {
		if kmalloc == nil {
			u.check("bytes_alloc", want.BytesAlloc, "no kmalloc event from the probe", traceDetail(obs.events))
		} else {
			obj.ptr = kmalloc.Fields["ptr"]
			got, _ := kmalloc.Uint("bytes_alloc")
			node, _ := kmalloc.Int("node")
			u.check("bytes_alloc", want.BytesAlloc, got, kmalloc.Line)
			u.check("trace_node", int64(want.Node), node, kmalloc.Line)
		}
	}
	if st.Node != reference.NoNode {
		u.check("page_node", st.Node, obs.Reply.Node, fmt.Sprintf("node of pfn %#x", obj.pfn))
	}
	u.checkCounters(obs)
	return nil
}

// free runs a free step; size zero frees with the allocation's size.
func (u *unit) free(ctx context.Context, name string, sizeExpr scenario.Size) error {
	obj := u.objects[name]
	if obj == nil {
		// Its allocation failed: as the model predicted (nothing to free),
		// or against it (the alloc step has failed already).
		u.check("nothing_to_free", u.failedAsPredicted[name], true, "the allocation failed against the model's prediction")
		return nil
	}
	delete(u.objects, name)
	u.freed[name] = obj.handle
	for i, n := range u.order {
		if n == name {
			u.order = append(u.order[:i], u.order[i+1:]...)
			break
		}
	}
	var size uint64 // zero: the allocation's own size
	if !sizeExpr.IsZero() {
		var ok bool
		if size, ok = u.bytes(sizeExpr); !ok {
			return nil
		}
	}
	obs, err := u.probeStep(ctx, probe.Free(obj.handle, size))
	if obs == nil {
		return err
	}
	u.check("status", "0", errnoName(obs.Reply.Status), "")
	if obj.model < 0 || obs.Reply.Status != 0 {
		return nil
	}
	want, err := u.model.Free(obj.model, size)
	if err != nil {
		u.errorCheck("model", err)
		return nil
	}
	own := blockEvents(obs.events, obj, false, func(e ftrace.Event) bool {
		return e.Name == "kfree" && obj.ptr != "" && e.Fields["ptr"] == obj.ptr
	})
	u.checkEvents(want.Events(), own.events, obs.events)
	if !want.Slab {
		u.check("pages_freed", want.Pages, freedPages(own.events), "pages of the block freed during the step (mm_page_free)")
		u.checkDelta(int64(want.Pages), obs, own)
		u.checkSUnreclaim(want.SUnreclaim, obs)
	}
	u.checkCounters(obs)
	return nil
}

// stepObservation is an observation with its trace parsed.
type stepObservation struct {
	*observation
	events []ftrace.Event
}

// probeStep sends a request, checks the kernel log of the step, and parses
// the trace. A nil observation means the step could not be made: with an
// error the session is lost, without one the step has an error check.
func (u *unit) probeStep(ctx context.Context, request string) (*stepObservation, error) {
	obs, err := u.r.step(ctx, u.s, u.mark(), request)
	if err := u.lost(err); err != nil {
		return nil, err
	}
	if err != nil {
		u.errorCheck("probe", err)
		return nil, nil
	}
	titles := []string{}
	for _, f := range findings.Scan(obs.Kmsg) {
		titles = append(titles, f.Kind+": "+f.Title)
		u.r.res.Findings = append(u.r.res.Findings, report.Finding{Kind: f.Kind, Title: f.Title,
			Scenario: u.sc.Name, Mode: u.mode.name, Step: u.step, Context: f.Context})
	}
	u.check("kernel_log", []string{}, titles, strings.TrimSpace(obs.Kmsg))
	events, err := ftrace.Parse(obs.Trace)
	if err != nil {
		u.errorCheck("trace", err)
	}
	return &stepObservation{obs, events}, nil
}

// mark returns the kernel log marker of the current step, and remembers
// which step it names.
func (u *unit) mark() string {
	u.consoleAt = u.s.vm.Console().Len()
	mark := fmt.Sprintf("%s%s/%s#%s", markPrefix, u.sc.Name, u.mode.name, strings.Fields(u.step)[0])
	u.s.marks[mark] = stepRef{u.sc.Name, u.mode.name, u.step}
	return mark
}

// marked writes the current step's marker to the kernel log, then runs an
// agent command.
func (u *unit) marked(ctx context.Context, command string) error {
	_, err := u.r.guest(ctx, u.s, "mark "+u.mark())
	if err == nil {
		_, err = u.r.guest(ctx, u.s, command)
	}
	return err
}

// bytes evaluates a size for this guest; an error is the step's error check.
func (u *unit) bytes(size scenario.Size) (uint64, bool) {
	n, err := size.Bytes(u.s.guest)
	if err != nil {
		u.errorCheck("size", err)
		return 0, false
	}
	return n, true
}

// lost turns an error that ended the guest session into errSessionLost.
func (u *unit) lost(err error) error {
	if err == nil {
		return nil
	}
	var exit *guestssh.ExitError
	if errors.As(err, &exit) {
		return nil
	}
	return fmt.Errorf("%w: %w", errSessionLost, err)
}
