package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/runner"
	"github.com/pageman/pageman-harness/harness/scenario"
	"github.com/pageman/pageman-harness/harness/shrink"
)

// runRandom runs a random sequence (--seed, --ops) and, if a check fails,
// shrinks it to a small sequence that fails the same check and writes a
// reproducer bundle beside the results.
func runRandom(ctx context.Context, o runner.Options, seed int64, ops int, stdout io.Writer) int {
	name := fmt.Sprintf("random-%d", seed)
	text := scenario.Random(seed, ops)
	sc, err := scenario.Parse(name+".scn", name, []byte(text))
	if err != nil {
		fmt.Fprintf(stdout, "pageman-harness: generated scenario: %v\n", err)
		return 2
	}
	o.Generated = append(o.Generated, sc)
	res := runner.Run(ctx, o)
	res.PrintSummary(stdout)
	dir := runner.Dir(o, res)
	fmt.Fprintf(stdout, "results: %s\n", filepath.Join(dir, "results.json"))
	var first *report.Check
	for i, c := range res.Checks {
		if c.Status == report.Fail && c.Scenario == name {
			first = &res.Checks[i]
			break
		}
	}
	if res.Verdict != report.Fail || first == nil {
		return res.ExitCode()
	}

	start := time.Now()
	var steps []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			steps = append(steps, l)
		}
	}
	shrinkOpts := o
	shrinkOpts.Scenarios = nil
	shrinkOpts.ResultsDir = filepath.Join(dir, "shrink")
	var last *report.Results
	judge := func(ctx context.Context, cands [][]string) (int, error) {
		shrinkOpts.Generated = nil
		for i, c := range cands {
			cname := fmt.Sprintf("candidate-%d", i)
			csc, err := scenario.Parse(cname+".scn", cname, []byte(strings.Join(c, "\n")+"\n"))
			if err != nil {
				return -1, fmt.Errorf("candidate %d: %w", i, err)
			}
			csc.Modes = []string{first.Mode}
			shrinkOpts.Generated = append(shrinkOpts.Generated, csc)
		}
		r := runner.Run(ctx, shrinkOpts)
		last = r
		if r.Verdict == report.Error && r.Error != "" {
			return -1, fmt.Errorf("shrink run: %s", r.Error)
		}
		for i := range cands {
			for _, c := range r.Checks {
				if c.Scenario == fmt.Sprintf("candidate-%d", i) && c.Status == report.Fail && c.Name == first.Name {
					return i, nil
				}
			}
		}
		return -1, nil
	}
	small, rounds, err := shrink.Minimize(ctx, steps, scenario.Normalize, judge)
	if err != nil {
		fmt.Fprintf(stdout, "shrinking: %v\n", err)
		return 2
	}
	took := time.Since(start).Round(time.Second)
	bundle, err := writeBundle(dir, o, res, first, seed, ops, small, last)
	if err != nil {
		fmt.Fprintf(stdout, "reproducer: %v\n", err)
		return 2
	}
	fmt.Fprintf(stdout, "shrunk %d steps to %d in %d rounds (%s), still failing %s in mode %s\nreproducer: %s\n",
		len(steps), len(small), rounds, took, first.Name, first.Mode, bundle)
	return 1
}

// writeBundle writes the reproducer: a scenario that replays the small
// sequence, and what it takes to see the failure again.
func writeBundle(dir string, o runner.Options, res *report.Results, first *report.Check, seed int64, ops int,
	steps []string, last *report.Results) (string, error) {
	out := filepath.Join(dir, "repro")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	var scn strings.Builder
	fmt.Fprintf(&scn, "# Reproducer shrunk from --seed %d --ops %d (subject %s, kernel %s, cache key %s).\n",
		seed, ops, res.Subject, res.Kernel.Version, res.Kernel.Key)
	rerun := "pageman-harness run --subject " + res.Subject
	if o.Module != "" {
		rerun += " --module " + o.Module
	}
	for _, p := range o.ExtraPatches {
		rerun += " (with kernel patch " + p + ")"
	}
	fmt.Fprintf(&scn, "# It fails check %s in mode %s. Rerun: %s --scenario repro.scn\n", first.Name, first.Mode, rerun)
	fmt.Fprintf(&scn, "mode %s\n%s\n", first.Mode, strings.Join(steps, "\n"))
	var info strings.Builder
	fmt.Fprintf(&info, "subject: %s\nmodule override: %s\nextra kernel patches: %v\nkernel: %s (cache key %s)\nimage: %s\nbuild tree: %s\naccel: %s (%s)\n\nQEMU command line:\n%s\n\n",
		res.Subject, o.Module, o.ExtraPatches, res.Kernel.Version, res.Kernel.Key, res.Kernel.Image, res.Kernel.Tree, res.Accel, res.AccelWhy, res.QEMU)
	fmt.Fprintf(&info, "first failure of the full sequence: %s/%s %s %s: expected %s, observed %s\n%s\n\n",
		first.Scenario, first.Mode, first.Step, first.Name, report.Show(first.Expected), report.Show(first.Observed), first.Detail)
	if last != nil {
		fmt.Fprintf(&info, "failing checks of the last shrink round:\n")
		for _, c := range last.Checks {
			if c.Status == report.Fail {
				fmt.Fprintf(&info, "  %s/%s %s %s: expected %s, observed %s\n", c.Scenario, c.Mode, c.Step, c.Name, report.Show(c.Expected), report.Show(c.Observed))
			}
		}
	}
	if err := os.WriteFile(filepath.Join(out, "repro.scn"), []byte(scn.String()), 0o644); err != nil {
		return "", err
	}
	return out, os.WriteFile(filepath.Join(out, "README.txt"), []byte(info.String()), 0o644)
}
