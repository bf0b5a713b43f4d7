package scenario

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/pageman/pageman-harness/reference"
)

var guest = Guest{PageSize: 4096, KmallocMaxCacheSize: 8192, Orders: 11}

func TestSizeExpressions(t *testing.T) {
	for _, tc := range []struct {
		text string
		want uint64
	}{
		{"20481", 20481},
		{"5p+1", 5*4096 + 1},
		{"5p", 5 * 4096},
		{"page", 4096},
		{"kmalloc_max+1", 8193},
		{"maxorder", 4096 << 10},
		{"maxorder-1p", 4096<<10 - 4096},
		{"0x10p-0x1", 16*4096 - 1},
	} {
		s, err := ParseSize(tc.text)
		if err != nil {
			t.Errorf("ParseSize(%q): %v", tc.text, err)
			continue
		}
		got, err := s.Bytes(guest)
		if err != nil || got != tc.want {
			t.Errorf("%q = %d, %v; want %d", tc.text, got, err, tc.want)
		}
	}
}

func TestSizeErrors(t *testing.T) {
	for _, text := range []string{"", "5q", "p", "1++2", "-3", "pages"} {
		if _, err := ParseSize(text); err == nil {
			t.Errorf("ParseSize(%q) accepted", text)
		}
	}
	s, _ := ParseSize("1p-1p")
	if _, err := s.Bytes(guest); err == nil {
		t.Error("a size of 0 bytes evaluated without error")
	}
}

func TestParseSteps(t *testing.T) {
	sc, err := Parse("t.scn", "t", []byte("# comment\nalloc a kmalloc_node 3p node=1 # why\n\nfree a size=1p\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(sc.Steps) != 2 {
		t.Fatalf("steps = %+v", sc.Steps)
	}
	a, f := sc.Steps[0], sc.Steps[1]
	if a.Op != Alloc || a.Object != "a" || a.Path != reference.KmallocNode || a.Node != 1 || a.Line != 2 {
		t.Errorf("alloc step = %+v", a)
	}
	if f.Op != Free || f.Size.String() != "1p" || f.Line != 4 {
		t.Errorf("free step = %+v", f)
	}
	if got := a.String(); got != "alloc a kmalloc_node 3p node=1" {
		t.Errorf("String() = %q", got)
	}
}

// Every error names the file and the line, and says what was wrong.
func TestParseErrorsNameFileAndLine(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"alloc a kmalloc 5p\nalloc a kmalloc 1p\n", "t.scn:2: object \"a\" is already allocated (line 1)"},
		{"free a\n", "t.scn:1: free of \"a\""},
		{"alloc a kmalloc\n", "t.scn:1: want: alloc NAME PATH SIZE"},
		{"alloc a vmalloc 5p\n", "t.scn:1: unknown probe path \"vmalloc\""},
		{"alloc a kmalloc 5p node=1\n", "t.scn:1: path kmalloc takes no node"},
		{"\n\nallot a kmalloc 5p\n", "t.scn:3: unknown step \"allot\""},
		{"fault panic\n", "t.scn:1: want: fault KIND, KIND one of warn"},
		{"alloc a kmalloc 5x\n", "t.scn:1: size \"5x\""},
		{"# nothing\n", "t.scn: no steps"},
	} {
		_, err := Parse("t.scn", "t", []byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.text, err, tc.want)
		}
	}
}

// The scenarios shipped in scenarios/ and bench/ all parse.
func TestShippedScenarios(t *testing.T) {
	scs, err := LoadDir(filepath.Join("..", "..", "scenarios"))
	if err != nil {
		t.Fatal(err)
	}
	bench, err := LoadDir(filepath.Join("..", "..", "bench"))
	if err != nil {
		t.Fatal(err)
	}
	scs = append(scs, bench...)
	for _, sc := range scs {
		for _, st := range sc.Steps {
			if st.Op == Alloc || st.Op == Bench {
				if _, err := st.Size.Bytes(guest); err != nil {
					t.Errorf("%s:%d: %v", sc.File, st.Line, err)
				}
			}
		}
	}
}
