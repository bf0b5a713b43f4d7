// Package shrink reduces a failing sequence of scenario steps to a small
// one that still fails, by delta debugging (Zeller's ddmin): try the
// sequence without each of n chunks; keep the first that still fails;
// otherwise cut finer. Candidates are judged in batches, so that one guest
// boot can run all the candidates of a round.
package shrink

import "context"

// Judge runs candidate step sequences and returns the index of the first
// that fails, or -1 if none does.
type Judge func(ctx context.Context, candidates [][]string) (int, error)

// Minimize returns a subsequence of steps that still fails, such that
// removing any one of its chunks at the final granularity makes it pass.
// normalize repairs a candidate (drops steps left dangling). rounds counts
// the batches judged.
func Minimize(ctx context.Context, steps []string, normalize func([]string) []string, judge Judge) (out []string, rounds int, err error) {
	n := 2
	for len(steps) >= 2 {
		chunks := split(steps, n)
		var candidates [][]string
		for i := range chunks {
			var c []string
			for j, ch := range chunks {
				if j != i {
					c = append(c, ch...)
				}
			}
			if c = normalize(c); len(c) > 0 && len(c) < len(steps) {
				candidates = append(candidates, c)
			}
		}
		if len(candidates) == 0 {
			break
		}
		rounds++
		i, err := judge(ctx, candidates)
		if err != nil {
			return steps, rounds, err
		}
		switch {
		case i >= 0:
			steps = candidates[i]
			n = max(n-1, 2)
		case n >= len(steps):
			return steps, rounds, nil
		default:
			n = min(2*n, len(steps))
		}
	}
	return steps, rounds, nil
}

// split cuts s into n chunks of nearly equal length.
func split(s []string, n int) [][]string {
	var out [][]string
	for i := 0; i < n; i++ {
		lo, hi := i*len(s)/n, (i+1)*len(s)/n
		if lo < hi {
			out = append(out, s[lo:hi])
		}
	}
	return out
}
