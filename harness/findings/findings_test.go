package findings

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Each testdata/NAME.console is a real guest console; NAME.titles lists
// the findings it must give, one "KIND<tab>TITLE" per line, in order.
func TestCapturedConsoles(t *testing.T) {
	consoles, err := filepath.Glob("testdata/*.console")
	if err != nil || len(consoles) == 0 {
		t.Fatalf("no captures in testdata: %v", err)
	}
	for _, c := range consoles {
		t.Run(filepath.Base(c), func(t *testing.T) {
			text, err := os.ReadFile(c)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(c, ".console") + ".titles")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range Scan(string(text)) {
				got = append(got, f.Kind+"\t"+f.Title)
				if !strings.Contains(f.Context, strings.Split(string(text), "\n")[f.Line-1]) {
					t.Errorf("finding %q: context does not start at its line %d", f.Title, f.Line)
				}
			}
			if g, w := strings.Join(got, "\n"), strings.TrimSpace(string(want)); g != w {
				t.Errorf("findings\n%s\nwant\n%s", g, w)
			}
		})
	}
}

// The same fault, reported twice with other addresses and numbers, gets
// the same title.
func TestTitlesAreStable(t *testing.T) {
	a := Scan("[    2.265412] WARNING: CPU: 0 PID: 32 at /a/b/probe-3b2c/pageman_probe.c:231 probe_write+0x504/0x5db [pageman_probe]\n")
	b := Scan("[   12.000001] WARNING: CPU: 1 PID: 77 at /x/probe-ffff/pageman_probe.c:240 probe_write+0x10/0x5db [pageman_probe]\n")
	if len(a) != 1 || len(b) != 1 || a[0].Title != b[0].Title {
		t.Errorf("titles differ: %+v vs %+v", a, b)
	}
}

func BenchmarkScanCapturedConsole(b *testing.B) {
	data, err := os.ReadFile("testdata/clean-run.console")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		Scan(string(data))
	}
}
