package ftrace

import (
	"os"
	"strings"
	"testing"
)

// testdata/kmalloc-5p1-pageman-alloc.trace is a guest's trace of one probe
// step: kmalloc(5 pages + 1 byte) with Pageman loaded.
func TestParseCapture(t *testing.T) {
	b, err := os.ReadFile("testdata/kmalloc-5p1-pageman-alloc.trace")
	if err != nil {
		t.Fatal(err)
	}
	events, err := Parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	var lines int
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" && !strings.HasPrefix(l, "#") {
			lines++
		}
	}
	if len(events) != lines {
		t.Fatalf("%d events from %d event lines", len(events), lines)
	}
	names := map[string]int{}
	for _, e := range events {
		names[e.Name]++
		if !strings.Contains(e.Line, e.Name+":") || e.Task == "" || e.Time == "" {
			t.Errorf("event %+v", e)
		}
	}
	for _, n := range []string{"kmalloc", "kfree", "mm_page_alloc", "mm_page_free"} {
		if names[n] == 0 {
			t.Errorf("no %s event parsed", n)
		}
	}
	// The probe's kmalloc: a call site with a module suffix stays one field.
	for _, e := range events {
		if e.Name != "kmalloc" || !strings.HasPrefix(e.Fields["call_site"], "probe_write") {
			continue
		}
		if !strings.HasSuffix(e.Fields["call_site"], " [pageman_probe]") {
			t.Errorf("call_site = %q", e.Fields["call_site"])
		}
		req, err1 := e.Uint("bytes_req")
		node, err2 := e.Int("node")
		if err1 != nil || err2 != nil || !strings.Contains(e.Line, "bytes_req="+itoa(req)) || node != -1 {
			t.Errorf("bytes_req %d (%v), node %d (%v) from %s", req, err1, node, err2, e.Line)
		}
	}
}

func itoa(n uint64) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		if n /= 10; n == 0 {
			return string(b)
		}
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := Parse("# header\nnot an event\n"); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("err = %v, want one naming line 2", err)
	}
	e, err := Parse("  a-1 [000] ..... 1.0: mm_page_free: pfn=0xzz order=0\n")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e[0].Uint("pfn"); err == nil {
		t.Error("bad pfn parsed")
	}
	if _, err := e[0].Uint("missing"); err == nil {
		t.Error("missing field parsed")
	}
}

func BenchmarkParseCapturedStep(b *testing.B) {
	data, err := os.ReadFile("testdata/kmalloc-5p1-pageman-alloc.trace")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		if _, err := Parse(string(data)); err != nil {
			b.Fatal(err)
		}
	}
}
