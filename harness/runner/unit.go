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
	"github.com/pageman/pageman-harness/harness/procfs"
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
	consoleAt, findingsAt := s.vm.Console().Len(), len(r.res.Findings)
	err = u.run(ctx)
	switch {
	case ctx.Err() != nil:
		u.errorCheck("interrupted", ctx.Err())
		return false
	case errors.Is(err, errSessionLost):
		u.sessionLost(err, consoleAt, findingsAt)
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
	_, err := u.r.guest(ctx, u.s, "mark "+u.mark())
	if err == nil {
		_, err = u.r.guest(ctx, u.s, "insmod /"+guestModuleDir+"/"+u.r.module+".ko")
	}
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
	_, err := u.r.guest(ctx, u.s, "mark "+u.mark())
	if err == nil {
		_, err = u.r.guest(ctx, u.s, "rmmod "+u.r.module)
	}
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

// unknownHandle is a handle the probe never gives: a slot's generation
// that high is never reached.
const unknownHandle = 1 << 30

// alloc runs an allocation step.
func (u *unit) alloc(ctx context.Context, st scenario.Step) error {
	size, err := st.Size.Bytes(u.s.guest)
	if err != nil {
		u.errorCheck("size", err)
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
	events, kmalloc := blockEvents(obs.events, obj, true, func(e ftrace.Event) bool {
		req, err := e.Uint("bytes_req")
		return e.Name == "kmalloc" && err == nil && req == size
	})
	u.check("events", eventStrings(want.Events()), eventStrings(events), traceDetail(obs.events))
	if !want.Slab {
		u.check("pages_kept", want.Kept, keptPages(events, obj.order), "2^order minus the pages freed inside the block during the step (mm_page_free)")
		if u.checkDelta(-int64(want.Kept), obs, events) {
			u.checkBuddyDelta(want, obs)
		}
		u.checkSUnreclaim(want.SUnreclaim, obs)
	}
	if st.Path.IsKmalloc() {
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
	var size uint64
	if !sizeExpr.IsZero() {
		var err error
		if size, err = sizeExpr.Bytes(u.s.guest); err != nil {
			u.errorCheck("size", err)
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
	events, _ := blockEvents(obs.events, obj, false, func(e ftrace.Event) bool {
		return e.Name == "kfree" && obj.ptr != "" && e.Fields["ptr"] == obj.ptr
	})
	u.check("events", eventStrings(want.Events()), eventStrings(events), traceDetail(obs.events))
	if !want.Slab {
		u.check("pages_freed", want.Pages, freedPages(events), "pages of the block freed during the step (mm_page_free)")
		u.checkDelta(int64(want.Pages), obs, events)
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
	var titles []string
	for _, f := range findings.Scan(obs.Kmsg) {
		titles = append(titles, f.Kind+": "+f.Title)
		u.r.res.Findings = append(u.r.res.Findings, report.Finding{Kind: f.Kind, Title: f.Title,
			Scenario: u.sc.Name, Mode: u.mode.name, Step: u.step, Context: f.Context})
	}
	u.check("kernel_log", []string{}, append([]string{}, titles...), strings.TrimSpace(obs.Kmsg))
	events, err := ftrace.Parse(obs.Trace)
	if err != nil {
		u.errorCheck("trace", err)
	}
	return &stepObservation{obs, events}, nil
}

// mark returns the kernel log marker of the current step, and remembers
// which step it names.
func (u *unit) mark() string {
	mark := fmt.Sprintf("%s%s/%s#%s", markPrefix, u.sc.Name, u.mode.name, strings.Fields(u.step)[0])
	u.s.marks[mark] = stepRef{u.sc.Name, u.mode.name, u.step}
	return mark
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

// checkDelta compares the change of free pages across the call with the
// model's. Other kernel code may allocate or free pages meanwhile (a
// softirq, a task that runs while the probe waits for the drain): those
// page events, traced between the probe's two count marks and not the
// object's own, are taken out of the measured change, and listed.
// It reports whether no other kernel code changed free pages meanwhile.
func (u *unit) checkDelta(want int64, obs *stepObservation, own []reference.Event) bool {
	measured := int64(probe.FreePages(obs.Reply.FreeAfter)) - int64(probe.FreePages(obs.Reply.FreeBefore))
	foreign, lines := foreignDelta(obs.events, own)
	got := measured - foreign
	u.netExpected += want
	u.netObserved += got
	detail := fmt.Sprintf("free blocks per order before %v, after %v (per-CPU lists drained): %+d pages",
		obs.Reply.FreeBefore, obs.Reply.FreeAfter, measured)
	if len(lines) > 0 {
		detail += fmt.Sprintf("; %+d of them by other kernel code meanwhile:\n%s", foreign, strings.Join(lines, "\n"))
	}
	u.check("free_pages_delta", want, got, detail)
	return len(lines) == 0
}

// checkBuddyDelta compares the change of free blocks per order across an
// allocation with the model's, for the larger order the block was split
// from (the model cannot know which free block the kernel takes). It is
// made only when no other kernel code changed free pages meanwhile: their
// blocks' splits and merges are not the model's to predict.
func (u *unit) checkBuddyDelta(want reference.Alloc, obs *stepObservation) {
	before, after := obs.Reply.FreeBefore, obs.Reply.FreeAfter
	delta := make([]int64, len(after))
	for o := range delta {
		delta[o] = int64(after[o]) - int64(before[o])
	}
	k, ok := reference.ExplainAlloc(delta, want)
	if !ok {
		k = want.Order
	}
	u.check("buddy_delta", reference.AllocDelta(len(delta), want, k), delta,
		fmt.Sprintf("free blocks per order before %v, after %v; no split from any order %d..%d explains it", before, after, want.Order, len(delta)-1))
}

// foreignDelta is the change of free pages that page events between the
// probe's count marks (kfree(NULL) from the probe) made, less the object's
// own events, with the foreign events' lines.
func foreignDelta(all []ftrace.Event, own []reference.Event) (int64, []string) {
	var marks []int
	for i, e := range all {
		if e.Name == "kfree" && strings.Contains(e.Fields["call_site"], "[pageman_probe]") && strings.Trim(e.Fields["ptr"], "0") == "" {
			marks = append(marks, i)
		}
	}
	if len(marks) < 2 {
		return 0, nil
	}
	var window int64
	var lines []string
	for _, e := range all[marks[0]+1 : marks[len(marks)-1]] {
		if d, ok := pageDelta(e.Name, e); ok {
			window += d
			lines = append(lines, strings.TrimSpace(e.Line))
		}
	}
	var mine int64
	for _, e := range own {
		switch e.Name {
		case "mm_page_free":
			mine += 1 << e.Order
		case "mm_page_alloc":
			mine -= 1 << e.Order
		}
	}
	if window == mine && len(lines) == len(ownPageEvents(own)) {
		return 0, nil
	}
	return window - mine, lines
}

// pageDelta is the change of free pages one page event makes.
func pageDelta(name string, e ftrace.Event) (int64, bool) {
	order, err := e.Uint("order")
	if err != nil {
		return 0, false
	}
	switch name {
	case "mm_page_free":
		return 1 << order, true
	case "mm_page_alloc":
		return -(1 << order), true
	}
	return 0, false
}

func ownPageEvents(own []reference.Event) []reference.Event {
	var out []reference.Event
	for _, e := range own {
		if e.Name == "mm_page_alloc" || e.Name == "mm_page_free" {
			out = append(out, e)
		}
	}
	return out
}

// checkSUnreclaim compares the change of unreclaimable slab bytes across
// the call (the probe's exact reading) with the model's.
func (u *unit) checkSUnreclaim(want int64, obs *stepObservation) {
	got := obs.Reply.SUnreclaimAfter - obs.Reply.SUnreclaimBefore
	u.check("sunreclaim_delta", want, got, fmt.Sprintf("SUnreclaim bytes before %d, after %d",
		obs.Reply.SUnreclaimBefore, obs.Reply.SUnreclaimAfter))
}

// checkCounters compares the change of Pageman's counters across the
// request with the change the model predicts. Changes, not totals: other
// kernel code may use Pageman's paths too while the module is loaded.
func (u *unit) checkCounters(obs *stepObservation) {
	if !u.loaded {
		return
	}
	c := u.model.Counters()
	p := u.counters
	u.counters = c
	want := counterDelta([]int64{c.FittedAllocs - p.FittedAllocs, c.FittedFrees - p.FittedFrees,
		c.Live - p.Live, c.PagesKept - p.PagesKept, c.PagesSaved - p.PagesSaved})
	before, err1 := procfs.ParseKeyValues(obs.PagemanBefore)
	after, err2 := procfs.ParseKeyValues(obs.Pageman)
	if err := errors.Join(err1, err2); err != nil || obs.Pageman == "" || obs.PagemanBefore == "" {
		u.check("pageman_counters", want, fmt.Sprintf("unreadable /proc/pageman (%v): before %q, after %q", err, obs.PagemanBefore, obs.Pageman), "")
		return
	}
	var got []int64
	for _, name := range counterNames {
		got = append(got, after[name]-before[name])
	}
	u.check("pageman_counters", want, counterDelta(got), fmt.Sprintf("/proc/pageman before the request:\n%s\nafter:\n%s", obs.PagemanBefore, obs.Pageman))
}

// counterNames are /proc/pageman's counters, in the order they print.
var counterNames = []string{"fitted_allocs", "fitted_frees", "live", "pages_kept", "pages_saved"}

func counterDelta(d []int64) string {
	var parts []string
	for i, name := range counterNames {
		parts = append(parts, fmt.Sprintf("%s%+d", name, d[i]))
	}
	return strings.Join(parts, " ")
}

// check records a comparison; values are equal when they print the same.
func (u *unit) check(name string, want, got any, detail string) {
	status := report.Pass
	if report.Show(want) != report.Show(got) {
		status = report.Fail
	} else {
		detail = ""
	}
	u.r.res.Checks = append(u.r.res.Checks, report.Check{Scenario: u.sc.Name, Mode: u.mode.name, Step: u.step,
		Name: name, Status: status, Expected: want, Observed: got, Detail: detail})
}

func (u *unit) errorCheck(name string, err error) {
	u.r.res.Checks = append(u.r.res.Checks, report.Check{Scenario: u.sc.Name, Mode: u.mode.name, Step: u.step,
		Name: name, Status: report.Error, Expected: "no error", Observed: err.Error()})
}

// blockEvents picks the trace events of one object: the page events inside
// its block and the kmalloc or kfree event that match says is its own.
// Page events are named by offset from the head, as the model names them.
// The block's pages are the object's until someone allocates one of them
// again: an alloc step's own mm_page_alloc is the first at the block's
// head, a free step has none; any later one ends the object's events.
func blockEvents(all []ftrace.Event, obj *object, alloc bool, match func(ftrace.Event) bool) ([]reference.Event, *ftrace.Event) {
	var out []reference.Event
	var own *ftrace.Event
	for i, e := range all {
		switch e.Name {
		case "mm_page_alloc", "mm_page_free":
			if obj.slab {
				continue // the slab page is shared with other objects
			}
			pfn, err := e.Uint("pfn")
			if err != nil || pfn < obj.pfn || pfn >= obj.pfn+1<<obj.order {
				continue
			}
			if e.Name == "mm_page_alloc" {
				if !alloc || pfn != obj.pfn {
					return out, own // a page of the block reused
				}
				alloc = false
			}
			order, _ := e.Uint("order")
			out = append(out, reference.Event{Name: e.Name, Offset: pfn - obj.pfn, Order: int(order)})
		case "kmalloc", "kfree":
			if !strings.Contains(e.Fields["call_site"], "[pageman_probe]") || !match(e) {
				continue
			}
			own = &all[i]
			ev := reference.Event{Name: e.Name}
			if e.Name == "kmalloc" {
				ev.BytesReq, _ = e.Uint("bytes_req")
				ev.BytesAlloc, _ = e.Uint("bytes_alloc")
				node, _ := e.Int("node")
				ev.Node = int(node)
			}
			out = append(out, ev)
		}
	}
	return out, own
}

func eventStrings(events []reference.Event) []string {
	out := []string{}
	for _, e := range events {
		out = append(out, e.String())
	}
	return out
}

func freedPages(events []reference.Event) uint64 {
	var n uint64
	for _, e := range events {
		if e.Name == "mm_page_free" {
			n += 1 << e.Order
		}
	}
	return n
}

func keptPages(events []reference.Event, order int) any {
	for _, e := range events {
		if e.Name == "mm_page_alloc" {
			return int64(1)<<order - int64(freedPages(events))
		}
	}
	return "no mm_page_alloc event at the block's head"
}

// traceDetail is the step's trace, for a failed event check.
func traceDetail(events []ftrace.Event) string {
	var b strings.Builder
	b.WriteString("trace of the step:")
	for i, e := range events {
		if i == 40 {
			fmt.Fprintf(&b, "\n... %d more", len(events)-40)
			break
		}
		b.WriteString("\n" + strings.TrimSpace(e.Line))
	}
	return b.String()
}

func errnoName(status int) string {
	if status == 0 {
		return "0"
	}
	switch syscall.Errno(-status) {
	case syscall.ENOMEM:
		return "ENOMEM"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.ENOENT:
		return "ENOENT"
	case syscall.ENOSPC:
		return "ENOSPC"
	}
	return fmt.Sprintf("errno %d", -status)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
