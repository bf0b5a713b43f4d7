package scenario

import (
	"fmt"
	"math/rand"
	"strings"

	"github.com/pageman/pageman-harness/reference"
)

// Random returns the text of a scenario of ops steps drawn from seed: one
// to three allocations for each free, over every path, with sizes of 3 to
// 64 pages (some a byte over a page boundary), nodes 0 and 1 where the
// path takes one, and frees in random order, some with another size. The
// same seed always gives the same text.
func Random(seed int64, ops int) string {
	r := rand.New(rand.NewSource(seed))
	var b strings.Builder
	fmt.Fprintf(&b, "# random sequence: --seed %d --ops %d\n", seed, ops)
	var live []string
	next := 0
	for i := 0; i < ops; i++ {
		if len(live) == 0 || r.Intn(3) > 0 {
			name := fmt.Sprintf("o%d", next)
			next++
			path := reference.Paths[r.Intn(len(reference.Paths))]
			size := fmt.Sprintf("%dp", 3+r.Intn(62))
			if r.Intn(2) == 0 {
				size += fmt.Sprintf("+%d", 1+r.Intn(4095))
			}
			fmt.Fprintf(&b, "alloc %s %s %s", name, path, size)
			if path.HasNode() {
				fmt.Fprintf(&b, " node=%d", r.Intn(2))
			}
			b.WriteString("\n")
			live = append(live, name)
			continue
		}
		j := r.Intn(len(live))
		fmt.Fprintf(&b, "free %s\n", live[j])
		live = append(live[:j], live[j+1:]...)
	}
	return b.String()
}

// Normalize drops the steps that name an object no earlier step allocates
// (after other steps were removed from a scenario), so the rest parses.
func Normalize(lines []string) []string {
	allocated := map[string]bool{}
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == string(Alloc):
			if allocated[f[1]] {
				continue
			}
			allocated[f[1]] = true
		case len(f) >= 2 && f[0] == string(Free):
			if !allocated[f[1]] {
				continue
			}
			delete(allocated, f[1])
		}
		out = append(out, l)
	}
	return out
}
