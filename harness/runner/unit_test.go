package runner

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/pageman/pageman-harness/harness/ftrace"
	"github.com/pageman/pageman-harness/harness/probe"
	"github.com/pageman/pageman-harness/reference"
)

// The block events picked from a real trace of one step (kmalloc of 5
// pages and a byte with Pageman loaded, then its kfree) are exactly the
// events the model predicts for that step.
func TestBlockEventsOfCapturedSteps(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	reply, err := probe.ParseReply(read("../probe/testdata/alloc.reply"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := reference.New(reference.Config{PageSize: 4096, Orders: reply.Orders, KmallocMaxCacheSize: 8192}, reference.Pageman)
	if err != nil {
		t.Fatal(err)
	}
	const size = 5*4096 + 1 // the step's request
	want, err := m.Alloc(reference.Kmalloc, size, reference.NoNode)
	if err != nil {
		t.Fatal(err)
	}
	events, err := ftrace.Parse(read("../ftrace/testdata/kmalloc-5p1-pageman-alloc.trace"))
	if err != nil {
		t.Fatal(err)
	}
	obj := &object{pfn: reply.PFN, order: reply.Order}
	sel := blockEvents(events, obj, true, func(e ftrace.Event) bool {
		req, _ := e.Uint("bytes_req")
		return e.Name == "kmalloc" && req == size
	})
	got, kmalloc := sel.events, sel.matched
	if !reflect.DeepEqual(eventStrings(got), eventStrings(want.Events())) {
		t.Errorf("alloc events\n got %v\nwant %v", eventStrings(got), eventStrings(want.Events()))
	}
	if kmalloc == nil {
		t.Fatal("the probe's kmalloc event was not found")
	}
	if k := keptPages(got, obj.order); k != int64(want.Kept) {
		t.Errorf("kept pages %v, model %d", k, want.Kept)
	}

	free, err := m.Free(want.Handle, 0)
	if err != nil {
		t.Fatal(err)
	}
	obj.ptr = kmalloc.Fields["ptr"]
	events, err = ftrace.Parse(read("../ftrace/testdata/kmalloc-5p1-pageman-free.trace"))
	if err != nil {
		t.Fatal(err)
	}
	got = blockEvents(events, obj, false, func(e ftrace.Event) bool {
		return e.Name == "kfree" && e.Fields["ptr"] == obj.ptr
	}).events
	if !reflect.DeepEqual(eventStrings(got), eventStrings(free.Events())) {
		t.Errorf("free events\n got %v\nwant %v", eventStrings(got), eventStrings(free.Events()))
	}
	if n := freedPages(got); n != free.Pages {
		t.Errorf("freed %d pages, model %d", n, free.Pages)
	}
}

// A page of the block allocated again by someone else ends the object's
// events: what follows is not the object's.
func TestBlockEventsStopAtReuse(t *testing.T) {
	events, err := ftrace.Parse(` a-1 [000] ..... 1.0: mm_page_free: page=x pfn=0x100 order=2
 a-1 [000] ..... 1.1: mm_page_alloc: page=x pfn=0x100 order=2 migratetype=0 gfp_flags=GFP_KERNEL
 a-1 [000] ..... 1.2: mm_page_free: page=x pfn=0x103 order=0
`)
	if err != nil {
		t.Fatal(err)
	}
	got := blockEvents(events, &object{pfn: 0x100, order: 2}, false, func(ftrace.Event) bool { return false }).events
	if want := []string{"mm_page_free +0 order=2"}; !reflect.DeepEqual(eventStrings(got), want) {
		t.Errorf("got %v, want %v", eventStrings(got), want)
	}
}

// A softirq may take a tail page the object gave back at its alloc, before
// the object's free: that ends nothing for the pages the object still
// holds (seen on a real guest: pages_exact_nid of 64 pages and a byte).
func TestBlockEventsKeepOwnFreesAfterTailReuse(t *testing.T) {
	events, err := ftrace.Parse(` a-1 [000] ..s.. 1.0: mm_page_alloc: page=x pfn=0x2b41 order=0 migratetype=0 gfp_flags=GFP_ATOMIC
 a-1 [000] ..... 1.1: mm_page_free: page=x pfn=0x2b00 order=6
 a-1 [000] ..... 1.2: mm_page_free: page=x pfn=0x2b40 order=0
`)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := reference.New(reference.Config{PageSize: 4096, Orders: 11, KmallocMaxCacheSize: 8192}, reference.Pageman)
	a, _ := m.Alloc(reference.PagesExactNid, 64*4096+1, 0)
	f, _ := m.Free(a.Handle, 0)
	got := blockEvents(events, &object{pfn: 0x2b00, order: a.Order}, false, func(ftrace.Event) bool { return false }).events
	if !reflect.DeepEqual(eventStrings(got), eventStrings(f.Events())) {
		t.Errorf("got %v, want the model's %v", eventStrings(got), eventStrings(f.Events()))
	}
}

// Only the page events between the probe's count marks that are not the
// object's own are counted as other kernel code's, and only they are listed.
func TestForeignDeltaCountsOnlyOthersEvents(t *testing.T) {
	events, err := ftrace.Parse(` a-1 [000] ..... 1.0: kfree: call_site=probe_write+0x1/0x2 [pageman_probe] ptr=0000000000000000
 a-1 [000] ..... 1.1: mm_page_alloc: page=x pfn=0x100 order=3 migratetype=0 gfp_flags=GFP_KERNEL
 a-1 [000] ..s.. 1.2: mm_page_alloc: page=x pfn=0x900 order=0 migratetype=0 gfp_flags=GFP_ATOMIC
 a-1 [000] ..... 1.3: mm_page_free: page=x pfn=0x106 order=1
 a-1 [000] ..... 1.4: kfree: call_site=probe_write+0x3/0x4 [pageman_probe] ptr=0000000000000000
 a-1 [000] ..s.. 1.5: mm_page_free: page=x pfn=0x901 order=0
`)
	if err != nil {
		t.Fatal(err)
	}
	own := blockEvents(events, &object{pfn: 0x100, order: 3}, true, func(ftrace.Event) bool { return false })
	delta, lines := foreignDelta(events, own)
	if delta != -1 || len(lines) != 1 || !strings.Contains(lines[0], "pfn=0x900") {
		t.Errorf("foreign delta %d, lines %q; want -1 from the one GFP_ATOMIC page inside the marks", delta, lines)
	}
}
