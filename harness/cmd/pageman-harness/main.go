// Command pageman-harness builds a kernel with an allocator patch series,
// boots it in QEMU, runs allocation probes over SSH and checks every
// number against the reference allocator. It is a thin layer of flags
// over package runner.
//
//	pageman-harness run [flags]       the main job (see run --help)
//	pageman-harness mutants [flags]   the scenarios against every mutant
//	pageman-harness deps              install the host packages it needs
//
// Exit codes: 0 every check passed, 1 a check failed, 2 the harness could
// not run (bad input, a build failure, a guest that never came up).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pageman/pageman-harness/harness/hostdeps"
	"github.com/pageman/pageman-harness/harness/mutants"
	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/runner"
)

const usage = `usage: pageman-harness COMMAND [flags]

commands:
  run      build the kernel and modules, boot the guest, run the scenarios
  mutants  run the scenarios against each deliberately wrong Pageman (guest/mutants)
           and print "mutants caught: X/Y"
  bench    time allocations and frees in the guest (bench/*.scn) on the unpatched
           kernel, and on the Pageman kernel without and with the module
  deps     check and install (apt-get, as root) the host packages it needs

Run "pageman-harness run --help" for the flags of run.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var code int
	switch os.Args[1] {
	case "run":
		code = run(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "deps":
		code = deps(ctx, os.Args[2:], os.Stderr)
	case "mutants":
		code = runMutants(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "bench":
		code = runBench(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "pageman-harness: unknown command %q\n\n%s", os.Args[1], usage)
		code = 2
	}
	os.Exit(code)
}

// repeated is a flag that may be given more than once.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// runFlags defines the flags of run (and of mutants, which runs too).
func runFlags(fs *flag.FlagSet, o *runner.Options, scenarios *repeated, verbose *bool) {
	fs.StringVar(&o.Root, "root", "", "the pageman-harness source tree (guest/, scenarios/); default: found from the working directory")
	fs.StringVar(&o.KernelSrc, "kernel-src", "", "kernel tree to patch and build, e.g. ~/linux-6.5.3; the patch series is chosen by its version\n(default: Debian's linux-source-6.1, fetched with apt-get download)")
	fs.StringVar(&o.KernelImage, "kernel-image", "", "prebuilt bzImage to boot instead of building one; its modules are built against its build tree")
	fs.StringVar(&o.KernelBuild, "kernel-build", "", "build tree of --kernel-image (default: the tree the image sits in, TREE/arch/x86/boot/bzImage)")
	fs.Var(scenarios, "scenario", "scenario file to run; repeatable (default: every scenarios/*.scn)")
	fs.StringVar(&o.ResultsDir, "results", "", "directory for results; each run writes RESULTS/<run>/ (default: ROOT/results)")
	fs.StringVar(&o.Accel, "accel", "auto", "auto: KVM only once a trial boot proves it works, else TCG; kvm or tcg force one")
	fs.StringVar(&o.Subject, "subject", "pageman", "what to test: pageman (the corrected design), seed (the seed report's design, known bad)\nor vanilla (the kernel without Pageman: vanilla mode only)")
	fs.StringVar(&o.Module, "module", "", "out-of-tree module directory to load instead of the subject's (e.g. a broken variant)")
	fs.StringVar(&o.Cmdline, "append", "", "extra kernel command line for the guest")
	fs.StringVar(&o.CacheDir, "cache", runner.DefaultCacheDir(), "cache of kernel builds, modules, the u-root image and ccache")
	fs.StringVar(&o.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.IntVar(&o.Jobs, "jobs", 0, "make -j for the kernel build (default: CPUs+1)")
	fs.DurationVar(&o.BootTimeout, "boot-timeout", 0, "bound on QEMU start to SSH ready (default: 180s under TCG, 60s under KVM,\nlater boots 5 times the first plus 10s)")
	fs.DurationVar(&o.StepTimeout, "step-timeout", 0, "bound on one command in the guest (default: 100 times the measured probe\nround trip, between 15s and 120s)")
	fs.BoolVar(&o.SkipDeps, "skip-deps", false, "do not check host packages")
	fs.BoolVar(verbose, "v", false, "log progress at debug level")
}

// parseRun parses run's flags into options; ok is false when the program
// should exit with code.
func parseRun(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (o runner.Options, ok bool, code int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var scenarios repeated
	var verbose bool
	runFlags(fs, &o, &scenarios, &verbose)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, false, 0
		}
		return o, false, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pageman-harness %s: unexpected arguments %q\n", name, fs.Args())
		return o, false, 2
	}
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	o.Scenarios = scenarios
	if o.Root == "" {
		root, err := findRoot()
		if err != nil {
			fmt.Fprintf(stderr, "pageman-harness: %v\n", err)
			return o, false, 2
		}
		o.Root = root
	}
	return o, true, 0
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var seed int64
	var ops int
	o, ok, code := parseRun("run", args, stderr, func(fs *flag.FlagSet) {
		fs.Int64Var(&seed, "seed", 0, "run a random sequence of allocations and frees drawn from this seed (with --ops);\na failure is shrunk to a small reproducer under RESULTS/<run>/repro/")
		fs.IntVar(&ops, "ops", 40, "steps of the random sequence of --seed")
	})
	if !ok {
		return code
	}
	if seed != 0 {
		if ops < 1 {
			fmt.Fprintf(stderr, "pageman-harness run: --ops %d: want at least 1\n", ops)
			return 2
		}
		return runRandom(ctx, o, seed, ops, stdout)
	}
	res := runner.Run(ctx, o)
	res.PrintSummary(stdout)
	fmt.Fprintf(stdout, "results: %s\n", filepath.Join(runner.Dir(o, res), "results.json"))
	return res.ExitCode()
}

// runMutants runs the scenarios against every mutant and prints the score.
func runMutants(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var dir, only string
	o, ok, code := parseRun("mutants", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&dir, "mutants", "", "directory of mutant patches (default: ROOT/guest/mutants)")
		fs.StringVar(&only, "only", "", "run only the mutants whose name contains this")
	})
	if !ok {
		return code
	}
	if dir == "" {
		dir = filepath.Join(o.Root, "guest", "mutants")
	}
	all, err := mutants.Load(dir)
	if err != nil {
		fmt.Fprintf(stderr, "pageman-harness mutants: %v\n", err)
		return 2
	}
	caught, total := 0, 0
	var survivors []string
	for _, m := range all {
		if !strings.Contains(m.Name, only) {
			continue
		}
		total++
		r, err := mutants.Run(ctx, m, o)
		switch {
		case err != nil:
			fmt.Fprintf(stdout, "ERROR    %s: %v\n", m.Name, err)
			survivors = append(survivors, m.Name+" (not run: "+err.Error()+")")
		case r.Caught:
			caught++
			first := r.Failed[0]
			fmt.Fprintf(stdout, "caught   %-24s %d checks failed; first %s/%s %s %s: expected %s, observed %s\n", m.Name, len(r.Failed),
				first.Scenario, first.Mode, first.Step, first.Name, report.Show(first.Expected), report.Show(first.Observed))
		default:
			fmt.Fprintf(stdout, "SURVIVED %-24s verdict %s %s (%s)\n", m.Name, r.Verdict, r.Error, r.Dir)
			survivors = append(survivors, m.Name+": "+m.Why)
		}
		if ctx.Err() != nil {
			break
		}
	}
	for _, s := range survivors {
		fmt.Fprintf(stdout, "survivor: %s\n", s)
	}
	fmt.Fprintf(stdout, "mutants caught: %d/%d\n", caught, total)
	if total == 0 || caught < total {
		return 1
	}
	return 0
}

func deps(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "pageman-harness deps takes no arguments\n")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := hostdeps.Ensure(ctx, log, hostdeps.Packages); err != nil {
		fmt.Fprintf(stderr, "pageman-harness deps: %v\n", err)
		return 2
	}
	return 0
}

// findRoot walks up from the working directory to this project's go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/pageman/pageman-harness\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no pageman-harness source tree at or above %s: run from the repository or pass --root", dir)
		}
	}
}
