package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/runner"
)

// runBench runs the bench scenarios on the unpatched kernel (subject
// vanilla) and on the Pageman kernel, and prints the median cost of one
// allocation and free per path: what the hooks cost with the module
// unloaded, and what fitting costs with it loaded.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, ok, code := parseRun("bench", args, stderr, nil)
	if !ok {
		return code
	}
	if len(o.Scenarios) == 0 {
		files, _ := filepath.Glob(filepath.Join(o.Root, "bench", "*.scn"))
		o.Scenarios = files
	}
	type key struct{ path, size string }
	costs := map[key]map[string][]float64{} // column -> samples
	var keys []key
	columns := []string{"unpatched kernel", "Pageman kernel, unloaded", "Pageman kernel, loaded"}
	for _, subject := range []string{"vanilla", "pageman"} {
		o.Subject = subject
		res := runner.Run(ctx, o)
		if res.Verdict != report.Pass {
			res.PrintSummary(stdout)
			fmt.Fprintf(stdout, "bench: the run on subject %s did not pass\n", subject)
			return res.ExitCode()
		}
		for _, m := range res.Measurements {
			col := columns[0]
			if subject == "pageman" {
				col = columns[1]
				if m.Mode == "pageman" {
					col = columns[2]
				}
			}
			k := key{m.Path, fmt.Sprint(m.Size)}
			if costs[k] == nil {
				costs[k] = map[string][]float64{}
				keys = append(keys, k)
			}
			costs[k][col] = append(costs[k][col], m.NsPerOp)
		}
	}
	fmt.Fprintf(stdout, "median ns per allocation and free, in the guest (TCG), over the rounds of bench/*.scn:\n")
	fmt.Fprintf(stdout, "%-22s %8s", "path", "bytes")
	for _, c := range columns {
		fmt.Fprintf(stdout, " %26s", c)
	}
	fmt.Fprintln(stdout)
	for _, k := range keys {
		fmt.Fprintf(stdout, "%-22s %8s", k.path, k.size)
		for _, c := range columns {
			s := costs[k][c]
			if len(s) == 0 {
				fmt.Fprintf(stdout, " %26s", "-")
				continue
			}
			fmt.Fprintf(stdout, " %18.0f (n=%2d)  ", median(s), len(s))
		}
		fmt.Fprintln(stdout)
	}
	return 0
}

func median(s []float64) float64 {
	s = append([]float64(nil), s...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
