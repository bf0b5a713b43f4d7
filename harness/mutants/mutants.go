// Package mutants runs the harness against deliberately wrong variants of
// Pageman (guest/mutants/*.patch) to show that its checks catch them. A
// mutant is a patch whose first paragraph says what is wrong; it changes
// either the module (paths under guest/) or the kernel (paths like
// mm/slab_common.c, applied after the subject's series). A mutant is
// caught when the run's verdict is fail.
package mutants

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/runner"
)

// Mutant is one deliberately wrong variant.
type Mutant struct {
	Name   string // file name without .patch
	Why    string // what is wrong
	Patch  string // path of the patch
	Module string // for a module mutant: the module directory it patches, relative to the root
}

// Load reads every mutant in dir, in name order.
func Load(dir string) ([]Mutant, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.patch"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no mutants (*.patch) in %s", dir)
	}
	sort.Strings(files)
	var out []Mutant
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		m := Mutant{Name: strings.TrimSuffix(filepath.Base(f), ".patch"), Patch: f}
		text := string(b)
		why, _, _ := strings.Cut(text, "\n\n")
		m.Why = strings.TrimSpace(strings.TrimPrefix(why, "Mutant:"))
		i := strings.Index(text, "\n--- a/")
		if i < 0 {
			return nil, fmt.Errorf("mutant %s: no diff (--- a/PATH)", f)
		}
		path := strings.Fields(text[i+len("\n--- a/"):])[0]
		if strings.HasPrefix(path, "guest/") {
			m.Module = filepath.Dir(path)
		}
		out = append(out, m)
	}
	return out, nil
}

// Result is the outcome for one mutant.
type Result struct {
	Mutant  Mutant
	Caught  bool
	Verdict string
	Failed  []report.Check // the failing checks
	Dir     string         // the run's results
	Error   string         // why the run could not decide
}

// Run applies m to a copy of what it changes and runs the harness with o.
func Run(ctx context.Context, m Mutant, o runner.Options) (Result, error) {
	res := Result{Mutant: m}
	if m.Module != "" {
		tmp, err := os.MkdirTemp("", "pageman-mutant-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(tmp)
		if err := copyDir(filepath.Join(o.Root, m.Module), tmp); err != nil {
			return res, err
		}
		depth := strings.Count(m.Module, "/") + 2 // a/ plus the module's path
		cmd := exec.CommandContext(ctx, "patch", fmt.Sprintf("-p%d", depth), "--batch", "-i", m.Patch)
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			return res, fmt.Errorf("mutant %s does not apply to %s: %w\n%s", m.Name, m.Module, err, out)
		}
		o.Module = tmp
	} else {
		o.ExtraPatches = append(o.ExtraPatches, m.Patch)
	}
	r := runner.Run(ctx, o)
	res.Verdict, res.Error = r.Verdict, r.Error
	res.Caught = r.Verdict == report.Fail
	res.Dir = runner.Dir(o, r)
	for _, c := range r.Checks {
		if c.Status == report.Fail {
			res.Failed = append(res.Failed, c)
		}
	}
	return res, nil
}

func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
