package e2e

import (
	"strings"
	"testing"
)

// The seed report's design, run on every scenario (SUBJECT=seed), must
// end with exit code 1 and a failing check for each of its fault classes.
func TestSeedDesignIsCaught(t *testing.T) {
	bin := bootingHarness(t)
	out := t.TempDir()
	r := runHarness(t, bin, "--subject", "seed", "--results", out)
	if r.code != 1 {
		t.Fatalf("exit code %d, want 1 (some check failed)", r.code)
	}
	res, _ := readResults(t, out)
	failed := map[string][]string{}
	for _, c := range res.Checks {
		if c.Status == "fail" {
			failed[c.Name] = append(failed[c.Name], c.Scenario+"/"+c.Mode+" "+c.Step)
		}
	}
	var kernel []string
	for _, f := range res.Findings {
		kernel = append(kernel, f.Kind+": "+f.Title)
	}
	for class, checks := range map[string][]string{
		"bytes_alloc in pages, not bytes":             {"bytes_alloc"},
		"allocation on NUMA_NO_NODE, not the node":    {"page_node"},
		"bad page state, refcount BUG or WARN":        {"kernel_log", "guest_alive"},
		"pages not returned after kfree":              {"pages_freed", "all_pages_back"},
		"pages kept or freed other than the model's":  {"pages_kept", "events"},
		"SUnreclaim not moved by the kept bytes":      {"sunreclaim_delta"},
		"unloaded while fitted allocations were live": {"module_unload"},
	} {
		var seen []string
		for _, name := range checks {
			seen = append(seen, failed[name]...)
		}
		if len(seen) == 0 {
			t.Errorf("fault class %q: no failing %s check", class, strings.Join(checks, " or "))
		} else {
			t.Logf("fault class %q: caught by %d checks, first %s", class, len(seen), seen[0])
		}
	}
	t.Logf("findings: %q", kernel)
	if n := qemuLeft(t, out); n != 0 {
		t.Errorf("%d QEMU processes of the run left after it", n)
	}
}
