package procfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testdata/buddyinfo is a guest's, with two NUMA nodes and 11 orders
// (6.1: MAX_ORDER 11, exclusive).
func TestBuddyinfoCapture(t *testing.T) {
	text := fixture(t, "buddyinfo")
	zones, err := ParseBuddyinfo(text)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(zones) != len(lines) {
		t.Fatalf("%d zones for %d lines", len(zones), len(lines))
	}
	for i, z := range zones {
		f := strings.Fields(lines[i])
		if z.Node != i || z.Name != f[3] || len(z.Free) != len(f)-4 {
			t.Errorf("zone %d = %+v from %q", i, z, lines[i])
		}
		if got := Orders(zones); got != len(f)-4 {
			t.Errorf("Orders = %d, want the line's %d counts", got, len(f)-4)
		}
	}
}

func TestBuddyinfoErrors(t *testing.T) {
	for _, text := range []string{
		"",
		"Node 0, zone DMA32",
		"Node x, zone DMA32 1 2",
		"Node 0, zone DMA32 1 two",
		"Node 0, zone DMA32 1 2\nNode 1, zone DMA32 1 2 3",
	} {
		if _, err := ParseBuddyinfo(text); err == nil {
			t.Errorf("ParseBuddyinfo(%q) accepted", text)
		}
	}
}

func TestMeminfoCapture(t *testing.T) {
	m, err := ParseMeminfo(fixture(t, "meminfo"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"MemTotal", "MemFree", "SUnreclaim", "Slab"} {
		if _, ok := m[key]; !ok {
			t.Errorf("no %s in the capture", key)
		}
	}
	if m["MemTotal"]%1024 != 0 || m["MemTotal"] < m["MemFree"] {
		t.Errorf("MemTotal %d, MemFree %d: kB not converted to bytes", m["MemTotal"], m["MemFree"])
	}
	if _, err := ParseMeminfo("MemTotal: 12 MB"); err == nil {
		t.Error("unit MB accepted")
	}
}

func TestPagemanStatsCapture(t *testing.T) {
	kv, err := ParseKeyValues(fixture(t, "pageman"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"fitted_allocs", "fitted_frees", "live", "pages_kept", "pages_saved"} {
		if _, ok := kv[key]; !ok {
			t.Errorf("no %s counter in the capture", key)
		}
	}
	if kv["live"] != kv["fitted_allocs"]-kv["fitted_frees"] {
		t.Errorf("live %d != fitted_allocs %d - fitted_frees %d", kv["live"], kv["fitted_allocs"], kv["fitted_frees"])
	}
	if _, err := ParseKeyValues("live"); err == nil {
		t.Error("a line without a value accepted")
	}
}
