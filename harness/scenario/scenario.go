// Package scenario reads probe scenarios: small line-oriented files that
// say which allocations and frees to make, never what to expect (the
// reference allocator predicts that). A scenario file looks like:
//
//	# Large kmalloc of five pages and a byte.
//	alloc big kmalloc 5p+1
//	alloc near pages_exact_nid 3p node=1
//	free near size=1p
//	free big
//
// Sizes are sums and differences of terms: a byte count (20481), pages
// (5p), and the guest's own constants, read from the running kernel:
// page (one page), kmalloc_max (KMALLOC_MAX_CACHE_SIZE) and maxorder (a
// block of the largest order). Every error names the file and line.
//
// "mode vanilla" or "mode pageman" runs the scenario in that mode only
// (default: both, vanilla first).
//
// "unload" and "load" unload and reload the module under test mid-scenario
// (mode pageman only). "misuse KIND [NAME]" sends the probe a request it
// must refuse cleanly: zero-size (EINVAL), unknown-handle (ENOENT),
// double-free NAME of an object already freed (ENOENT).
//
// "bench PATH SIZE COUNT" times COUNT allocations and frees in the guest
// (a measurement, not a check).
//
// "fault KIND" breaks the guest on purpose, to test the harness itself:
// warn, oops, hang (spin) and block (sleep uninterruptibly) in the kernel,
// through the probe module; kill-ssh (the guest's SSH server stops) and
// kill-qemu (the host kills QEMU).
package scenario

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/pageman/pageman-harness/reference"
)

// Scenario is one parsed file.
type Scenario struct {
	Name  string // file name without extension
	File  string
	Modes []string // modes to run in, in order
	Steps []Step
}

// Modes are the ways a scenario can run: without the module under test,
// and with it loaded.
var Modes = []string{"vanilla", "pageman"}

// Op is what a step does.
type Op string

// The operations.
const (
	Alloc        Op = "alloc"
	Free         Op = "free"
	Fault        Op = "fault"
	UnloadModule Op = "unload"
	LoadModule   Op = "load"
	Misuse       Op = "misuse"
	Bench        Op = "bench"
)

// Misuses are the kinds a misuse step may name.
var Misuses = []string{"zero-size", "unknown-handle", "double-free"}

// Faults are the kinds a fault step may name.
var Faults = []string{"warn", "oops", "hang", "block", "kill-ssh", "kill-qemu"}

// Step is one line of a scenario.
type Step struct {
	Line   int
	Op     Op
	Object string         // the name the scenario gives the object
	Path   reference.Path // alloc only
	Size   Size           // alloc: bytes to ask for; free: size to pass (zero: the allocation's)
	Node   int            // alloc: node to ask for, reference.NoNode if none
	Fault  string         // fault: one of Faults; misuse: one of Misuses
	Count  int            // bench: allocations and frees to time
}

// String gives the step as the scenario wrote it (normalised).
func (s Step) String() string {
	switch s.Op {
	case Fault, Misuse:
		return strings.TrimSpace(fmt.Sprintf("%s %s %s", s.Op, s.Fault, s.Object))
	case LoadModule, UnloadModule:
		return string(s.Op)
	case Bench:
		return fmt.Sprintf("bench %s %s %d", s.Path, s.Size, s.Count)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", s.Op, s.Object)
	if s.Op == Alloc {
		fmt.Fprintf(&b, " %s %s", s.Path, s.Size)
		if s.Node != reference.NoNode {
			fmt.Fprintf(&b, " node=%d", s.Node)
		}
	} else if !s.Size.IsZero() {
		fmt.Fprintf(&b, " size=%s", s.Size)
	}
	return b.String()
}

// Guest holds the constants a size may name, read from the guest.
type Guest struct {
	PageSize            uint64
	KmallocMaxCacheSize uint64
	Orders              int
}

// Size is a size expression, evaluated once the guest's constants are known.
type Size struct {
	terms []term
	text  string
}

type term struct {
	sign  int64
	count int64
	unit  string // "", "p", "page", "kmalloc_max", "maxorder"
}

// IsZero reports whether no size was given.
func (s Size) IsZero() bool { return len(s.terms) == 0 }

func (s Size) String() string { return s.text }

// Bytes evaluates the size for a guest. A size below one byte is an error.
func (s Size) Bytes(g Guest) (uint64, error) {
	var total int64
	for _, t := range s.terms {
		var unit int64
		switch t.unit {
		case "":
			unit = 1
		case "p", "page":
			unit = int64(g.PageSize)
		case "kmalloc_max":
			unit = int64(g.KmallocMaxCacheSize)
		case "maxorder":
			unit = int64(g.PageSize) << (g.Orders - 1)
		}
		total += t.sign * t.count * unit
	}
	if total < 1 {
		return 0, fmt.Errorf("size %s is %d bytes for this guest", s.text, total)
	}
	return uint64(total), nil
}

// ParseSize parses a size expression such as 5p+1 or kmalloc_max+1.
func ParseSize(text string) (Size, error) {
	s := Size{text: text}
	rest := text
	sign := int64(1)
	for {
		end := strings.IndexAny(rest, "+-")
		tok := rest
		if end >= 0 {
			tok = rest[:end]
		}
		t, err := parseTerm(tok)
		if err != nil {
			return Size{}, fmt.Errorf("size %q: %w", text, err)
		}
		t.sign = sign
		s.terms = append(s.terms, t)
		if end < 0 {
			return s, nil
		}
		if rest[end] == '-' {
			sign = -1
		} else {
			sign = 1
		}
		rest = rest[end+1:]
	}
}

func parseTerm(tok string) (term, error) {
	if tok == "" {
		return term{}, fmt.Errorf("empty term")
	}
	for _, named := range []string{"page", "kmalloc_max", "maxorder"} {
		if tok == named {
			return term{count: 1, unit: named}, nil
		}
	}
	digits := strings.TrimSuffix(tok, "p")
	n, err := strconv.ParseInt(digits, 0, 64)
	if err != nil || n < 0 {
		return term{}, fmt.Errorf("term %q: want a count of bytes (20481), of pages (5p), or page, kmalloc_max, maxorder", tok)
	}
	if digits != tok {
		return term{count: n, unit: "p"}, nil
	}
	return term{count: n}, nil
}

// Load reads and checks one scenario file.
func Load(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	return Parse(path, name, b)
}

// LoadDir reads every *.scn file of a directory, in name order.
func LoadDir(dir string) ([]*Scenario, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.scn"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no scenarios (*.scn) in %s", dir)
	}
	var out []*Scenario
	for _, f := range files {
		s, err := Load(f)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Parse parses a scenario's text; file names it in errors.
func Parse(file, name string, text []byte) (*Scenario, error) {
	sc := &Scenario{Name: name, File: file}
	live := map[string]int{} // object name -> line of its alloc
	freed := map[string]bool{}
	lines := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; lines.Scan(); n++ {
		line, _, _ := strings.Cut(lines.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] == "mode" {
			if len(f) != 2 || !slices.Contains(Modes, f[1]) || sc.Modes != nil {
				return nil, fmt.Errorf("%s:%d: want one line \"mode vanilla\" or \"mode pageman\"", file, n)
			}
			sc.Modes = f[1:]
			continue
		}
		step, err := parseStep(f)
		switch {
		case err != nil:
		case step.Op == Alloc || step.Op == Free:
			err = track(live, step)
			if step.Op == Free {
				freed[step.Object] = true
			}
		case step.Op == Misuse && step.Fault == "double-free" && !freed[step.Object]:
			err = fmt.Errorf("double-free of %q, which has not been freed before", step.Object)
		case (step.Op == LoadModule || step.Op == UnloadModule) && slices.Equal(sc.Modes, []string{"vanilla"}):
			err = fmt.Errorf("%s needs the module under test: not in a \"mode vanilla\" scenario", step.Op)
		}
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, n, err)
		}
		step.Line = n
		sc.Steps = append(sc.Steps, step)
		if step.Op == Alloc {
			live[step.Object] = n
		}
	}
	if err := lines.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(sc.Steps) == 0 {
		return nil, fmt.Errorf("%s: no steps", file)
	}
	if sc.Modes == nil {
		sc.Modes = Modes
	}
	return sc, nil
}

// track checks that objects are allocated before they are freed, and
// freed once; a scenario may leave objects live (the harness frees them).
func track(live map[string]int, s Step) error {
	_, isLive := live[s.Object]
	switch {
	case s.Op == Alloc && isLive:
		return fmt.Errorf("object %q is already allocated (line %d)", s.Object, live[s.Object])
	case s.Op == Free && !isLive:
		return fmt.Errorf("free of %q, which is not allocated at this point", s.Object)
	case s.Op == Free:
		delete(live, s.Object)
	}
	return nil
}

func parsePathSize(path, size string) (reference.Path, Size, error) {
	p, err := reference.ParsePath(path)
	if err != nil {
		return "", Size{}, err
	}
	sz, err := ParseSize(size)
	return p, sz, err
}

func parseStep(f []string) (Step, error) {
	s := Step{Op: Op(f[0]), Node: reference.NoNode}
	switch s.Op {
	case Alloc:
		if len(f) < 4 {
			return s, fmt.Errorf("want: alloc NAME PATH SIZE [node=N]")
		}
		var err error
		if s.Path, s.Size, err = parsePathSize(f[2], f[3]); err != nil {
			return s, err
		}
		for _, opt := range f[4:] {
			v, ok := strings.CutPrefix(opt, "node=")
			if !ok {
				return s, fmt.Errorf("unknown option %q (want node=N)", opt)
			}
			if s.Node, err = strconv.Atoi(v); err != nil || s.Node < 0 {
				return s, fmt.Errorf("node %q: want a node number", v)
			}
			if !s.Path.HasNode() {
				return s, fmt.Errorf("path %s takes no node", s.Path)
			}
		}
	case Free:
		if len(f) < 2 || len(f) > 3 {
			return s, fmt.Errorf("want: free NAME [size=SIZE]")
		}
		if len(f) == 3 {
			v, ok := strings.CutPrefix(f[2], "size=")
			if !ok {
				return s, fmt.Errorf("unknown option %q (want size=SIZE)", f[2])
			}
			var err error
			if s.Size, err = ParseSize(v); err != nil {
				return s, err
			}
		}
	case Fault:
		if len(f) != 2 || !slices.Contains(Faults, f[1]) {
			return s, fmt.Errorf("want: fault KIND, KIND one of %s", strings.Join(Faults, ", "))
		}
		s.Fault = f[1]
		return s, nil
	case LoadModule, UnloadModule:
		if len(f) != 1 {
			return s, fmt.Errorf("want: %s (no arguments)", s.Op)
		}
		return s, nil
	case Bench:
		if len(f) != 4 {
			return s, fmt.Errorf("want: bench PATH SIZE COUNT")
		}
		var err error
		if s.Path, s.Size, err = parsePathSize(f[1], f[2]); err != nil {
			return s, err
		}
		if s.Count, err = strconv.Atoi(f[3]); err != nil || s.Count < 1 || s.Count > 1000000 {
			return s, fmt.Errorf("count %q: want 1 to 1000000", f[3])
		}
		return s, nil
	case Misuse:
		if len(f) < 2 || !slices.Contains(Misuses, f[1]) || (f[1] == "double-free") != (len(f) == 3) || len(f) > 3 {
			return s, fmt.Errorf("want: misuse zero-size | misuse unknown-handle | misuse double-free NAME")
		}
		s.Fault = f[1]
		if len(f) == 3 {
			s.Object = f[2]
		}
		return s, nil
	default:
		return s, fmt.Errorf("unknown step %q (want alloc, free or fault)", f[0])
	}
	s.Object = f[1]
	return s, nil
}
