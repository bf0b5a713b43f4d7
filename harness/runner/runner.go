// Package runner composes the harness: it builds what a run needs (kernel,
// modules, initramfs), boots the guest, runs every scenario in both modes
// (Pageman not loaded, then loaded), compares each step with the reference
// allocator, and returns typed results. It holds no parsing or model logic
// of its own; those live in probe, ftrace, procfs, findings and reference.
package runner

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pageman/pageman-harness/harness/hostdeps"
	"github.com/pageman/pageman-harness/harness/kernel"
	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/scenario"
	"github.com/pageman/pageman-harness/harness/vm"
	"github.com/pageman/pageman-harness/initramfs"
)

// Options configure one run. Zero values take the documented defaults.
type Options struct {
	Root        string   // the pageman-harness source tree (guest/, scenarios/); required
	CacheDir    string   // build cache; default $XDG_CACHE_HOME/pageman-harness
	ResultsDir  string   // parent of the run's directory; default Root/results
	KernelSrc   string   // a kernel tree to patch and build; default Debian's linux-source-6.1
	KernelImage string   // a prebuilt bzImage instead of a build
	KernelBuild string   // the prebuilt image's build tree; default found beside it
	Scenarios   []string // scenario files; default Root/scenarios/*.scn
	Accel       string   // auto (default), kvm or tcg
	Subject     string   // patch series and module under test; default "pageman"
	// Module replaces the subject's module directory (guest/pageman) with
	// another out-of-tree module, e.g. a deliberately broken one.
	Module string
	// Cmdline is added to the guest's kernel command line.
	Cmdline string
	// ExtraPatches are applied to the kernel after the subject's series.
	ExtraPatches []string
	// Generated scenarios run after the files of Scenarios (with neither,
	// the files of Root/scenarios run).
	Generated []*scenario.Scenario
	QEMU      string // default qemu-system-x86_64
	Jobs      int    // make -j for the kernel; default CPUs+1
	SkipDeps  bool   // do not check host packages
	Log       *slog.Logger
	// BootTimeout bounds QEMU start to SSH ready. Zero: derived. The first
	// boot gets 180s under TCG (4-9s measured on a loaded 2-core host) or
	// 60s under KVM; later boots get 5 times the first one plus 10s.
	BootTimeout time.Duration
	// StepTimeout bounds one guest command. Zero: derived, 100 times the
	// measured round trip of a probe request, at least 15s, at most 120s.
	StepTimeout time.Duration
}

func (o *Options) defaults() error {
	if o.Root == "" {
		return errors.New("runner: Options.Root is required")
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	if o.ResultsDir == "" {
		o.ResultsDir = filepath.Join(o.Root, "results")
	}
	if o.Accel == "" {
		o.Accel = "auto"
	}
	if o.Subject == "" {
		o.Subject = "pageman"
	}
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// DefaultCacheDir is ${XDG_CACHE_HOME:-$HOME/.cache}/pageman-harness.
func DefaultCacheDir() string {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "pageman-harness")
}

// subject is what a run tests: a patch series, config fragments and the
// module it loads.
type subject struct {
	patchRoot string   // kernel.Spec.PatchRoot
	fragments []string // merged on tinyconfig in order
	module    string   // directory of the module under test
}

// Subjects are the names --subject takes.
var Subjects = []string{"pageman", "seed", "vanilla"}

func (o *Options) subject() (subject, error) {
	guest := filepath.Join(o.Root, "guest")
	base := filepath.Join(guest, "config", "base.config")
	switch o.Subject {
	case "pageman": // the corrected design
		return subject{filepath.Join(guest, "patches"), []string{base}, filepath.Join(guest, "pageman")}, nil
	case "vanilla": // the kernel without Pageman: only the probe's exports
		return subject{filepath.Join(guest, "patches", "vanilla"), []string{base}, ""}, nil
	case "seed": // the seed report's design, known bad
		return subject{filepath.Join(guest, "patches", "seed"), []string{base, filepath.Join(guest, "config", "seed.config")},
			filepath.Join(guest, "seed-pageman")}, nil
	}
	return subject{}, fmt.Errorf("unknown subject %q (want one of %s)", o.Subject, strings.Join(Subjects, ", "))
}

// Paths of the guest's files in the per-run archive.
const (
	guestModuleDir = "lib/pageman"
	guestHostKey   = "etc/pageman/ssh_host_ed25519_key"
	guestAuthKey   = "etc/pageman/authorized_key"
	probeModule    = "pageman_probe"
)

// Run performs one run and returns its results, already written to the
// run's directory. It never returns nil; a run that could not finish has
// Verdict "error" and Error set.
func Run(ctx context.Context, o Options) *report.Results {
	started := time.Now()
	res := &report.Results{Run: started.UTC().Format("20060102-150405"), Started: started.UTC(),
		Subject: o.Subject, Timings: map[string]string{}, Checks: []report.Check{}, Findings: []report.Finding{}}
	if err := o.defaults(); err != nil {
		res.Error = err.Error()
		res.Decide()
		return res
	}
	res.Subject = o.Subject
	dir := filepath.Join(o.ResultsDir, res.Run)
	if err := os.MkdirAll(filepath.Join(dir, "steps"), 0o755); err != nil {
		res.Error = fmt.Sprintf("results directory: %v", err)
		res.Decide()
		return res
	}
	r := &run{o: o, res: res, dir: dir}
	if err := r.execute(ctx); err != nil {
		res.Error = err.Error()
	}
	res.Timings["total"] = since(started)
	res.Decide()
	if err := res.WriteJSON(filepath.Join(dir, "results.json")); err != nil {
		o.Log.Error("writing results.json", "err", err)
	}
	if err := res.WriteJUnit(filepath.Join(dir, "junit.xml")); err != nil {
		o.Log.Error("writing junit.xml", "err", err)
	}
	return res
}

// Dir returns the directory a run's results are written to.
func Dir(o Options, res *report.Results) string {
	if o.ResultsDir == "" {
		o.ResultsDir = filepath.Join(o.Root, "results")
	}
	return filepath.Join(o.ResultsDir, res.Run)
}

func since(t time.Time) string { return time.Since(t).Round(10 * time.Millisecond).String() }

// run is the state of one run.
type run struct {
	o   Options
	res *report.Results
	dir string

	build     *kernel.Build
	initrd    string
	accel     vm.Accel
	hostKey   ssh.PublicKey
	clientKey ssh.Signer
	boots     int
	rawSteps  int           // steps whose raw observation went to steps/
	firstBoot time.Duration // QEMU start to SSH ready, measured
	module    string        // name of the module under test
}

// Bounds of the derived timeouts.
const (
	minStepTimeout = 15 * time.Second
	maxStepTimeout = 120 * time.Second
	// setupTimeout bounds guest commands before the round trip is known.
	setupTimeout = 60 * time.Second
)

// bootTimeout is the bound on the next boot: the user's, or derived from
// the accelerator and the first boot.
func (r *run) bootTimeout() time.Duration {
	switch {
	case r.o.BootTimeout > 0:
		return r.o.BootTimeout
	case r.firstBoot > 0:
		return 5*r.firstBoot + 10*time.Second
	case r.accel.Name == "kvm":
		return 60 * time.Second
	}
	return 180 * time.Second
}

// stepTimeout derives the bound on one guest command from the measured
// round trip of a probe request.
func (r *run) stepTimeout(rtt time.Duration) time.Duration {
	if r.o.StepTimeout > 0 {
		return r.o.StepTimeout
	}
	return min(max(100*rtt, minStepTimeout), maxStepTimeout).Round(100 * time.Millisecond)
}

func (r *run) execute(ctx context.Context) error {
	scenarios, err := r.loadScenarios()
	if err != nil {
		return err
	}
	if err := r.prepare(ctx); err != nil {
		return err
	}
	t := time.Now()
	defer func() { r.res.Timings["scenarios"] = since(t) }()
	var s *session
	defer func() {
		if s != nil {
			s.close(r)
		}
	}()
	for _, sc := range scenarios {
		for _, name := range sc.Modes {
			mode := modes[name]
			if mode.load && r.module == "" {
				r.o.Log.Info("no module under test: pageman mode not run", "scenario", sc.Name, "subject", r.o.Subject)
				continue
			}
			if s == nil {
				if s, err = r.boot(ctx); err != nil {
					return r.bootFailed(sc, mode, err)
				}
			}
			if alive := r.runUnit(ctx, s, sc, mode); !alive {
				s.close(r)
				s = nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("run interrupted: %w", ctx.Err())
			}
		}
	}
	return nil
}

func (r *run) loadScenarios() ([]*scenario.Scenario, error) {
	if len(r.o.Scenarios) == 0 && len(r.o.Generated) == 0 {
		return scenario.LoadDir(filepath.Join(r.o.Root, "scenarios"))
	}
	var out []*scenario.Scenario
	for _, f := range r.o.Scenarios {
		s, err := scenario.Load(f)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return append(out, r.o.Generated...), nil
}

// prepare builds or finds everything the guest needs.
func (r *run) prepare(ctx context.Context) error {
	o, log := r.o, r.o.Log
	subj, err := o.subject()
	if err != nil {
		return err
	}
	if o.Module != "" {
		if subj.module, err = filepath.Abs(o.Module); err != nil {
			return err
		}
	}
	if !o.SkipDeps {
		if err := hostdeps.Ensure(ctx, log, hostdeps.Packages); err != nil {
			return fmt.Errorf("host packages: %w", err)
		}
	}
	t := time.Now()
	if o.KernelImage != "" {
		r.build, err = kernel.Prebuilt(ctx, o.KernelImage, o.KernelBuild)
	} else {
		r.build, err = kernel.BuildKernel(ctx, kernel.Spec{
			Source:    o.KernelSrc,
			PatchRoot: subj.patchRoot,
			Fragments: subj.fragments,
			Extra:     o.ExtraPatches,
			CacheDir:  o.CacheDir,
			Jobs:      o.Jobs,
		}, log)
	}
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	r.res.Kernel = report.Kernel{Version: r.build.Version, Image: r.build.Image, Tree: r.build.Tree, Key: r.build.Key, Cached: r.build.Cached}
	r.res.Timings["kernel"] = since(t)

	t = time.Now()
	var files []initramfs.File
	dirs := []string{filepath.Join(o.Root, "guest", "probe")}
	if subj.module != "" {
		dirs = append(dirs, subj.module)
	}
	for _, dir := range dirs {
		kos, err := kernel.BuildModule(ctx, r.build, dir, o.CacheDir, o.Jobs)
		if err != nil {
			return err
		}
		if dir == subj.module {
			if len(kos) != 1 {
				return fmt.Errorf("module directory %s built %d modules, want one", dir, len(kos))
			}
			r.module = strings.TrimSuffix(filepath.Base(kos[0]), ".ko")
		}
		for _, ko := range kos {
			data, err := os.ReadFile(ko)
			if err != nil {
				return err
			}
			files = append(files, initramfs.File{Name: guestModuleDir + "/" + filepath.Base(ko), Data: data, Mode: 0o644})
		}
	}
	r.res.Timings["modules"] = since(t)

	t = time.Now()
	keyFiles, err := r.makeKeys()
	if err != nil {
		return err
	}
	files = append(files, keyFiles...)
	agent := filepath.Join(r.dir, "pageman-agent")
	if err := initramfs.BuildAgent(ctx, o.Root, agent); err != nil {
		return err
	}
	data, err := os.ReadFile(agent)
	if err != nil {
		return err
	}
	os.Remove(agent)
	files = append(files, initramfs.File{Name: strings.TrimPrefix(initramfs.AgentPath, "/"), Data: data, Mode: 0o755})
	base, err := initramfs.Base(ctx, o.Root, o.CacheDir, log)
	if err != nil {
		return err
	}
	r.initrd = filepath.Join(r.dir, "initramfs.cpio")
	if err := initramfs.Assemble(base, files, r.initrd); err != nil {
		return err
	}
	r.res.Timings["initramfs"] = since(t)

	t = time.Now()
	if r.accel, err = vm.ChooseAccel(ctx, o.Accel, o.QEMU, r.build.Image, o.CacheDir); err != nil {
		return err
	}
	r.res.Accel, r.res.AccelWhy = r.accel.Name, r.accel.Reason
	r.res.Timings["accel"] = since(t)
	log.Info("accelerator", "accel", r.accel.Name, "reason", r.accel.Reason)
	return nil
}

// makeKeys generates the guest's host key and the harness's client key
// for this run; the host key is pinned, the client key is the only one
// the guest accepts.
func (r *run) makeKeys() ([]initramfs.File, error) {
	hostPub, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if r.hostKey, err = ssh.NewPublicKey(hostPub); err != nil {
		return nil, err
	}
	hostPEM, err := ssh.MarshalPrivateKey(hostPriv, "pageman guest host key")
	if err != nil {
		return nil, err
	}
	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if r.clientKey, err = ssh.NewSignerFromKey(clientPriv); err != nil {
		return nil, err
	}
	return []initramfs.File{
		{Name: guestHostKey, Data: pem.EncodeToMemory(hostPEM), Mode: 0o600},
		{Name: guestAuthKey, Data: ssh.MarshalAuthorizedKey(r.clientKey.PublicKey()), Mode: 0o644},
	}, nil
}
