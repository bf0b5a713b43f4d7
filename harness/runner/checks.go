package runner

// The checks of a step: each compares what the guest showed with what the
// model predicts, and the trace-event selection they rest on.

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/pageman/pageman-harness/harness/ftrace"
	"github.com/pageman/pageman-harness/harness/probe"
	"github.com/pageman/pageman-harness/harness/procfs"
	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/reference"
)

// checkDelta compares the change of free pages across the call with the
// model's. Other kernel code may allocate or free pages meanwhile (a
// softirq, a task that runs while the probe waits for the drain): those
// page events, traced between the probe's two count marks and not the
// object's own, are taken out of the measured change, and listed.
// It reports whether no other kernel code changed free pages meanwhile.
func (u *unit) checkDelta(want int64, obs *stepObservation, own selection) bool {
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

// foreignDelta is the change of free pages made by the page events
// between the probe's count marks (its kfree(NULL) calls) that are not the
// object's own, with those events' lines.
func foreignDelta(all []ftrace.Event, own selection) (int64, []string) {
	var marks []int
	for i, e := range all {
		if e.Name == "kfree" && strings.Contains(e.Fields["call_site"], "[pageman_probe]") && strings.Trim(e.Fields["ptr"], "0") == "" {
			marks = append(marks, i)
		}
	}
	if len(marks) < 2 {
		return 0, nil
	}
	var delta int64
	var lines []string
	for i := marks[0] + 1; i < marks[len(marks)-1]; i++ {
		if d, ok := pageDelta(all[i]); ok && !own.index[i] {
			delta += d
			lines = append(lines, strings.TrimSpace(all[i].Line))
		}
	}
	return delta, lines
}

// pageDelta is the change of free pages one page event makes.
func pageDelta(e ftrace.Event) (int64, bool) {
	order, err := e.Uint("order")
	if err != nil {
		return 0, false
	}
	switch e.Name {
	case "mm_page_free":
		return 1 << order, true
	case "mm_page_alloc":
		return -(1 << order), true
	}
	return 0, false
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
		c.Live - p.Live, c.PagesKept - p.PagesKept, c.PagesSaved - p.PagesSaved,
		c.Live - p.Live}) // one record per live fitted block, no more
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

// counterNames are /proc/pageman's counters, in the order they print;
// records is counted in the module's record store itself.
var counterNames = []string{"fitted_allocs", "fitted_frees", "live", "pages_kept", "pages_saved", "records"}

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

// selection is the part of a step's trace that is one object's.
type selection struct {
	events  []reference.Event // in trace order, named as the model names them
	index   map[int]bool      // the positions of those events in the trace
	matched *ftrace.Event     // its kmalloc or kfree event, if any
}

// blockEvents picks the trace events of one object: the page events inside
// its block and the kmalloc or kfree event that match says is its own.
// Page events are named by offset from the head, as the model names them.
// Other kernel code may take a page the object gave back, even within
// the step (a softirq reusing a freed tail page): a later mm_page_alloc in
// the block marks its pages as someone else's, and events on them are no
// longer the object's. An alloc step's own event is the first
// mm_page_alloc at the block's head. It updates obj.held, the pages of the
// block the object holds.
func blockEvents(all []ftrace.Event, obj *object, alloc bool, match func(ftrace.Event) bool) selection {
	sel := selection{index: map[int]bool{}}
	size := uint64(1) << obj.order
	others := make([]bool, size) // pages someone else allocated meanwhile
	for i, e := range all {
		var ev reference.Event
		switch e.Name {
		case "mm_page_alloc", "mm_page_free":
			if obj.slab {
				continue // the slab page is shared with other objects
			}
			pfn, err1 := e.Uint("pfn")
			order, err2 := e.Uint("order")
			if err1 != nil || err2 != nil || pfn < obj.pfn || pfn >= obj.pfn+size {
				continue
			}
			lo, hi := pfn-obj.pfn, min(pfn-obj.pfn+1<<order, size)
			if e.Name == "mm_page_alloc" {
				if !alloc || pfn != obj.pfn || obj.held != nil {
					mark(others, lo, hi, true)
					continue
				}
				obj.held = make([]bool, size)
				mark(obj.held, lo, hi, true)
			} else {
				if anyMarked(others, lo, hi) {
					continue
				}
				if obj.held != nil {
					mark(obj.held, lo, hi, false)
				}
			}
			ev = reference.Event{Name: e.Name, Offset: lo, Order: int(order)}
		case "kmalloc", "kfree":
			if !strings.Contains(e.Fields["call_site"], "[pageman_probe]") || !match(e) {
				continue
			}
			sel.matched = &all[i]
			ev = reference.Event{Name: e.Name}
			if e.Name == "kmalloc" {
				ev.BytesReq, _ = e.Uint("bytes_req")
				ev.BytesAlloc, _ = e.Uint("bytes_alloc")
				node, _ := e.Int("node")
				ev.Node = int(node)
			}
		default:
			continue
		}
		sel.events = append(sel.events, ev)
		sel.index[i] = true
	}
	return sel
}

func mark(pages []bool, lo, hi uint64, v bool) {
	for p := lo; p < hi; p++ {
		pages[p] = v
	}
}

func anyMarked(pages []bool, lo, hi uint64) bool {
	for p := lo; p < hi; p++ {
		if pages[p] {
			return true
		}
	}
	return false
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

// checkEvents compares the object's trace events with the model's; on a
// mismatch the detail names the first divergent event, then the trace.
func (u *unit) checkEvents(want, got []reference.Event, trace []ftrace.Event) {
	w, g := eventStrings(want), eventStrings(got)
	u.check("events", w, g, divergence(w, g)+"\n"+traceDetail(trace))
}

// divergence says where two event sequences first differ, with the
// events around it.
func divergence(want, got []string) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	at := func(s []string, i int) string {
		if i < len(s) {
			return s[i]
		}
		return "(none)"
	}
	before := "(the first)"
	if i > 0 {
		before = want[i-1]
	}
	return fmt.Sprintf("first divergent event #%d: expected %s, observed %s; the event before it: %s; next expected %s, next observed %s",
		i+1, at(want, i), at(got, i), before, at(want, i+1), at(got, i+1))
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
