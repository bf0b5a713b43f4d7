package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pageman/pageman-harness/harness/findings"
	"github.com/pageman/pageman-harness/harness/guestssh"
	"github.com/pageman/pageman-harness/harness/probe"
	"github.com/pageman/pageman-harness/harness/procfs"
	"github.com/pageman/pageman-harness/harness/report"
	"github.com/pageman/pageman-harness/harness/scenario"
	"github.com/pageman/pageman-harness/harness/vm"
)

// readyMarker is what the guest agent prints once SSH listens
// (guest/agent). The first connection waits for it: user-mode networking
// accepts TCP before the guest listens, and such attempts hang.
const readyMarker = "pageman-agent: ssh ready"

// bootFailures end the wait for the agent at once.
var bootFailures = []string{"Kernel panic - not syncing", "pageman-agent: fatal"}

// traceEvents are the kmem events every step records.
var traceEvents = []string{"kmalloc", "kfree", "mm_page_alloc", "mm_page_free"}

// session is one booted guest with an SSH connection to its agent.
type session struct {
	vm      *vm.VM
	ssh     *guestssh.Client
	tmp     string // QMP socket directory
	console string // console log path
	guest   scenario.Guest
	orders  int
	nodes   int
	scanned int // console bytes already scanned for findings
	// timeout bounds one guest command: setupTimeout until a probe round
	// trip is measured, then derived from it.
	timeout time.Duration
	// marks maps a step marker written to the kernel log to its step, so a
	// finding on the console is tied to the step that was running.
	marks map[string]stepRef
}

type stepRef struct{ scenario, mode, step string }

// boot starts a guest and readies it: SSH up, probe module loaded,
// tracing on, the guest's constants read.
func (r *run) boot(ctx context.Context) (*session, error) {
	r.boots++
	console := filepath.Join(r.dir, "console.log")
	if r.boots > 1 {
		console = filepath.Join(r.dir, fmt.Sprintf("console-%d.log", r.boots))
	}
	if r.res.Console == "" {
		r.res.Console = console
	}
	tmp, err := os.MkdirTemp("", "pageman-vm-")
	if err != nil {
		return nil, err
	}
	t := time.Now()
	v, err := vm.Start(ctx, vm.Config{
		QEMU: r.o.QEMU, Kernel: r.build.Image, Initramfs: r.initrd, Accel: r.accel.Name,
		NUMANodes: 2, Dir: tmp, Console: console, Cmdline: r.o.Cmdline,
	})
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("starting the guest: %w", err)
	}
	s := &session{vm: v, tmp: tmp, console: console, marks: map[string]stepRef{}, timeout: setupTimeout}
	r.res.QEMU = v.CommandLine()
	if err := r.ready(ctx, s, t); err != nil {
		s.close(r)
		return nil, err
	}
	return s, nil
}

func (r *run) ready(ctx context.Context, s *session, started time.Time) error {
	limit := r.bootTimeout()
	bctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	m, err := s.vm.Console().WaitFor(bctx, 0, append([]string{readyMarker}, bootFailures...)...)
	if err == nil && m != readyMarker {
		err = fmt.Errorf("guest failed to boot (%q on the console)", m)
	}
	if err == nil {
		var c *guestssh.Client
		c, err = guestssh.WaitReady(bctx, s.vm.SSHAddr, r.clientKey, r.hostKey, 5*time.Second, s.vm.Alive)
		s.ssh = c
	}
	if err != nil {
		return fmt.Errorf("waiting for the guest agent (boot timeout %s): %w (%s)\nconsole %s, last lines:\n%s",
			limit, err, s.state(), s.console, s.vm.Console().Tail(25))
	}
	if r.firstBoot == 0 {
		r.firstBoot = time.Since(started)
		r.res.Timings["boot_to_ssh"] = since(started)
	}
	if st, err := s.vm.Status(bctx); err != nil || st != "running" {
		return fmt.Errorf("guest answers SSH but QMP query-status says %q (%v)", st, err)
	}
	cmds := []string{"insmod /" + guestModuleDir + "/" + probeModule + ".ko", "write /sys/kernel/tracing/buffer_size_kb 4096"}
	for _, e := range traceEvents {
		cmds = append(cmds, "write /sys/kernel/tracing/events/kmem/"+e+"/enable 1")
	}
	for _, c := range cmds {
		if _, err := r.guest(ctx, s, c); err != nil {
			return fmt.Errorf("setting up the guest: %w", err)
		}
	}
	t := time.Now()
	obs, err := r.step(ctx, s, "", probe.Info)
	if err != nil {
		return fmt.Errorf("reading the guest's constants: %w", err)
	}
	rtt := time.Since(t)
	s.timeout = r.stepTimeout(rtt)
	r.res.Timings["probe_round_trip"] = rtt.Round(time.Millisecond).String()
	r.res.Timings["step_timeout"] = s.timeout.String()
	zones, err := procfs.ParseBuddyinfo(obs.Buddyinfo)
	if err != nil {
		return fmt.Errorf("guest /proc/buddyinfo: %w", err)
	}
	s.orders = procfs.Orders(zones)
	if obs.Reply.Orders != s.orders {
		return fmt.Errorf("probe module counts %d orders, /proc/buddyinfo %d", obs.Reply.Orders, s.orders)
	}
	s.nodes = obs.Reply.Nodes
	s.guest = scenario.Guest{PageSize: obs.Reply.PageSize, KmallocMaxCacheSize: obs.Reply.KmallocMaxCacheSize, Orders: s.orders}
	r.o.Log.Info("guest ready", "orders", s.orders, "page_size", s.guest.PageSize,
		"kmalloc_max_cache_size", s.guest.KmallocMaxCacheSize, "nodes", s.nodes, "step_timeout", s.timeout)
	return nil
}

// close scans what is left of the console, stops QEMU and removes the
// session's temporary files.
func (s *session) close(r *run) {
	if s.ssh != nil {
		s.ssh.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.vm.Stop(ctx)
	r.scanConsole(s)
	os.RemoveAll(s.tmp)
}

// guest runs one agent command with the step timeout.
func (r *run) guest(ctx context.Context, s *session, command string) ([]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	out, err := s.ssh.Run(cctx, command)
	if err != nil {
		if cctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: no reply within %s: %w", errNoReply, s.timeout, err)
		}
		return out, r.guestError(s, err)
	}
	return out, nil
}

// errNoReply is a guest command that outlived the step timeout.
var errNoReply = errors.New("guest stopped answering")

// guestError adds what the console says when the guest stops answering.
func (r *run) guestError(s *session, err error) error {
	var exit *guestssh.ExitError
	if errors.As(err, &exit) {
		return err
	}
	return fmt.Errorf("%w (%s); console %s, last lines:\n%s", err, s.state(), s.console, s.vm.Console().Tail(25))
}

// state says how QEMU is: exited (with the QMP events it sent, such as
// SHUTDOWN or GUEST_PANICKED), or its run state from QMP.
func (s *session) state() string {
	if err := s.vm.Alive(); err != nil {
		if ev := s.vm.Events(); len(ev) > 0 {
			return fmt.Sprintf("%v; QMP events: %s", err, strings.Join(ev, ", "))
		}
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := s.vm.Status(ctx)
	if err != nil {
		return "QEMU running, QMP: " + err.Error()
	}
	return "QEMU running, guest " + st
}

// observation is what one step saw.
type observation struct {
	Reply     probe.Reply
	Trace     string
	Kmsg      string
	Buddyinfo string
	Meminfo   string
	// Pageman's counters just before the request and just after it.
	PagemanBefore, Pageman string
}

// step sends one probe request through the agent, writing mark to the
// kernel log first.
func (r *run) step(ctx context.Context, s *session, mark, request string) (*observation, error) {
	arg, err := json.Marshal(map[string]string{"mark": mark, "request": request})
	if err != nil {
		return nil, err
	}
	out, err := r.guest(ctx, s, "step "+string(arg))
	if err != nil {
		return nil, err
	}
	var raw struct {
		Probe, Trace, Kmsg, Buddyinfo, Meminfo, Pageman string
		PagemanBefore                                   string `json:"pageman_before"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("agent step reply: %w: %q", err, out)
	}
	reply, err := probe.ParseReply(raw.Probe)
	if err != nil {
		return nil, err
	}
	if r.rawSteps++; mark != "" {
		// The raw observation is the evidence behind the step's checks.
		name := fmt.Sprintf("%03d-%s.json", r.rawSteps, strings.NewReplacer("/", "-", "#", "-", " ", "").Replace(strings.TrimPrefix(mark, markPrefix)))
		if err := os.WriteFile(filepath.Join(r.dir, "steps", name), out, 0o644); err != nil {
			r.o.Log.Warn("keeping the step's raw observation", "err", err)
		}
	}
	return &observation{Reply: reply, Trace: raw.Trace, Kmsg: raw.Kmsg, Buddyinfo: raw.Buddyinfo, Meminfo: raw.Meminfo,
		PagemanBefore: raw.PagemanBefore, Pageman: raw.Pageman}, nil
}

// scanConsole reports the findings on the console since the last scan,
// each tied to the step whose marker precedes it. Findings a step already
// reported from its own kernel log are not repeated.
func (r *run) scanConsole(s *session) {
	text := s.vm.Console().String()
	if s.scanned > len(text) {
		return
	}
	seen := map[string]bool{}
	for _, f := range r.res.Findings {
		seen[f.Scenario+"|"+f.Mode+"|"+f.Step+"|"+f.Title] = true
	}
	// Start at a line boundary at or before the last scan's end.
	from := strings.LastIndex(text[:s.scanned], "\n") + 1
	var ref stepRef
	for _, f := range findings.Scan(text[from:]) {
		ref = s.refBefore(text[:from+f.Offset], ref)
		key := ref.scenario + "|" + ref.mode + "|" + ref.step + "|" + f.Title
		if seen[key] {
			continue
		}
		seen[key] = true
		r.res.Findings = append(r.res.Findings, report.Finding{Kind: f.Kind, Title: f.Title,
			Scenario: ref.scenario, Mode: ref.mode, Step: ref.step, Context: f.Context})
	}
	s.scanned = len(text)
}

// refBefore returns the step whose marker is the last one in text.
func (s *session) refBefore(text string, def stepRef) stepRef {
	i := strings.LastIndex(text, markPrefix)
	if i < 0 {
		return stepRef{step: "outside any step (boot or setup)"}
	}
	end := strings.IndexByte(text[i:], '\n')
	if end < 0 {
		end = len(text) - i
	}
	if ref, ok := s.marks[strings.TrimSpace(text[i:i+end])]; ok {
		return ref
	}
	return def
}
