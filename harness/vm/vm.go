// Package vm runs a QEMU x86_64 guest for one harness run: it starts QEMU
// with a kernel and initramfs, user-mode networking with the SSH port
// forwarded on 127.0.0.1 only, the serial console captured to a file, and a
// QMP socket driven with github.com/digitalocean/go-qemu. QEMU never
// outlives the harness: it is killed when the harness process dies
// (PR_SET_PDEATHSIG) and on every exit path through Stop.
package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// Config describes one guest. Zero values take the documented defaults.
type Config struct {
	QEMU      string // QEMU binary; default "qemu-system-x86_64"
	Kernel    string // bzImage; required
	Initramfs string // initramfs cpio; required
	Cmdline   string // extra kernel command line
	Accel     string // "kvm" or "tcg"; default "tcg"
	MemoryMB  int    // default 512, split evenly between the nodes
	CPUs      int    // default 1, all on node 0
	// NUMANodes is the number of NUMA nodes (default 1). With more than
	// one, the nodes after the first hold memory but no CPU, so that a
	// node argument decides where pages come from.
	NUMANodes int
	Dir       string // where the QMP socket goes (keep it short); required
	Console   string // console log file; default Dir/console.log
}

// ErrExited is returned when QEMU exits while the harness waits on it.
var ErrExited = errors.New("QEMU exited")

// VM is a running QEMU process.
type VM struct {
	cfg     Config
	args    []string
	cmd     *exec.Cmd
	console *Console
	mon     *qmp.SocketMonitor
	monMu   sync.Mutex

	// SSHAddr is the host address forwarded to the guest's port 22.
	SSHAddr string

	exited  chan struct{}
	waitErr error

	eventsMu sync.Mutex
	events   []string
}

// BaseCmdline is the kernel command line every guest gets: serial console,
// no reboot on panic (QEMU runs with -no-reboot, so a panic ends it at
// once), oops is panic. random.trust_cpu seeds the RNG at once from RDRAND (TCG emulates it), so
// that %p in trace events is hashed from the first step instead of
// printing "(____ptrval____)", and a kfree event can be tied to its kmalloc.
const BaseCmdline = "console=ttyS0 panic=-1 oops=panic random.trust_cpu=on"

// Start launches QEMU and connects to its monitor.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = "tcg"
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 512
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.NUMANodes == 0 {
		cfg.NUMANodes = 1
	}
	cfg.MemoryMB -= cfg.MemoryMB % cfg.NUMANodes // -m must be the nodes' sum
	for _, f := range []struct{ what, path string }{{"kernel image", cfg.Kernel}, {"initramfs", cfg.Initramfs}} {
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%s: %w", f.what, err)
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("choosing an SSH port: %w", err)
	}
	qmpPath := filepath.Join(cfg.Dir, "qmp.sock")
	_ = os.Remove(qmpPath)
	v := &VM{cfg: cfg, SSHAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), exited: make(chan struct{})}
	v.args = []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", cfg.Accel, "-cpu", cpuModel(cfg.Accel), "-m", strconv.Itoa(cfg.MemoryMB), "-smp", strconv.Itoa(cfg.CPUs),
		"-kernel", cfg.Kernel, "-initrd", cfg.Initramfs,
		"-append", strings.TrimSpace(BaseCmdline + " " + cfg.Cmdline),
		"-serial", "stdio",
		"-netdev", fmt.Sprintf("user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22", port),
		"-device", "virtio-net-pci,netdev=net0",
		"-qmp", "unix:" + qmpPath + ",server=on,wait=off",
	}
	v.args = append(v.args, numaArgs(cfg)...)
	if cfg.Console == "" {
		cfg.Console = filepath.Join(cfg.Dir, "console.log")
	}
	v.console, err = newConsole(cfg.Console)
	if err != nil {
		return nil, err
	}
	v.cmd = exec.Command(cfg.QEMU, v.args...)
	v.cmd.SysProcAttr = guardAttr()
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	v.cmd.Stderr = v.console
	started := make(chan error, 1)
	go func() {
		// PR_SET_PDEATHSIG fires when the thread that started QEMU ends,
		// not the process: keep that thread for QEMU's whole life.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := v.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		pumped := make(chan struct{})
		go func() { v.console.copyFrom(stdout); close(pumped) }()
		<-pumped // all output read before Wait closes the pipe
		v.waitErr = v.cmd.Wait()
		close(v.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", cfg.QEMU, err)
	}
	if err := v.connectMonitor(ctx, qmpPath); err != nil {
		v.Kill()
		return nil, err
	}
	return v, nil
}

// numaArgs gives each node an equal RAM backend; CPUs all go to node 0.
func numaArgs(cfg Config) []string {
	if cfg.NUMANodes < 2 {
		return nil
	}
	var args []string
	per := cfg.MemoryMB / cfg.NUMANodes
	for n := 0; n < cfg.NUMANodes; n++ {
		node := fmt.Sprintf("node,nodeid=%d,memdev=ram%d", n, n)
		if n == 0 {
			node += fmt.Sprintf(",cpus=0-%d", cfg.CPUs-1)
		}
		args = append(args, "-object", fmt.Sprintf("memory-backend-ram,id=ram%d,size=%dM", n, per), "-numa", node)
	}
	return args
}

// guardAttr makes QEMU die with the harness (SIGKILL on the parent's
// death, even if the harness itself is SIGKILLed) and puts it in its own
// process group so that Kill reaches any helper it forks.
func guardAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

// freePort asks the kernel for a free loopback TCP port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// connectMonitor waits for QEMU's QMP socket (it appears a moment after
// QEMU starts) and performs the capabilities handshake.
func (v *VM) connectMonitor(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		mon, err := qmp.NewSocketMonitor("unix", path, 2*time.Second)
		if err == nil {
			if err = mon.Connect(); err == nil {
				v.mon = mon
				events, _ := mon.Events(context.Background())
				go v.drainEvents(events)
				return nil
			}
		}
		select {
		case <-v.exited:
			return fmt.Errorf("%w before its monitor answered: %v\nconsole:\n%s", ErrExited, v.waitErr, v.console.Tail(20))
		case <-ctx.Done():
			return fmt.Errorf("QMP monitor %s: %v: %w", path, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// drainEvents keeps QMP events flowing (the library's channel is
// unbuffered and would block command replies) and remembers them.
func (v *VM) drainEvents(events <-chan qmp.Event) {
	for e := range events {
		v.eventsMu.Lock()
		v.events = append(v.events, e.Event)
		v.eventsMu.Unlock()
	}
}

// Events returns the names of the QMP events seen so far.
func (v *VM) Events() []string {
	v.eventsMu.Lock()
	defer v.eventsMu.Unlock()
	return append([]string(nil), v.events...)
}

// run sends one QMP command, bounded by ctx: the library has no timeout
// and blocks forever on a wedged QEMU.
func (v *VM) run(ctx context.Context, command string) (json.RawMessage, error) {
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		v.monMu.Lock()
		defer v.monMu.Unlock()
		b, err := v.mon.Run([]byte(`{"execute":"` + command + `"}`))
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("QMP %s: %w", command, r.err)
		}
		var reply struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(r.b, &reply); err != nil {
			return nil, fmt.Errorf("QMP %s reply: %w", command, err)
		}
		return reply.Return, nil
	case <-v.exited:
		return nil, fmt.Errorf("QMP %s: %w", command, ErrExited)
	case <-ctx.Done():
		return nil, fmt.Errorf("QMP %s: %w", command, ctx.Err())
	}
}

// Status returns the guest run state from QMP query-status ("running",
// "shutdown", "guest-panicked", ...).
func (v *VM) Status(ctx context.Context) (string, error) {
	b, err := v.run(ctx, "query-status")
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return "", fmt.Errorf("query-status: %w", err)
	}
	return st.Status, nil
}

// Console returns the guest's serial console.
func (v *VM) Console() *Console { return v.console }

// Exited is closed when QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Alive returns nil while QEMU runs, and an error naming how it ended.
func (v *VM) Alive() error {
	select {
	case <-v.exited:
		return fmt.Errorf("%w (%v)", ErrExited, v.waitErr)
	default:
		return nil
	}
}

// Stop ends QEMU: QMP quit, then SIGKILL if it has not exited in time.
// It is safe to call more than once and after QEMU died.
func (v *VM) Stop(ctx context.Context) error {
	if v.Alive() != nil {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := v.run(qctx, "quit")
	if err == nil {
		select {
		case <-v.exited:
			v.closeMonitor()
			return nil
		case <-qctx.Done():
		}
	}
	v.Kill()
	return nil
}

// Signal sends QEMU SIGKILL and returns at once, as if something outside
// the harness had killed it; the harness must notice by itself.
func (v *VM) Signal() error {
	if err := v.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing QEMU: %w", err)
	}
	return nil
}

// Kill ends QEMU at once and waits for it.
func (v *VM) Kill() {
	if v.cmd.Process != nil {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-v.exited
	v.closeMonitor()
}

func (v *VM) closeMonitor() {
	if v.mon != nil {
		_ = v.mon.Disconnect()
	}
}

// CommandLine returns the QEMU command line, quoted for a shell, so a user
// can rerun the guest by hand.
func (v *VM) CommandLine() string {
	parts := []string{shellQuote(v.cfg.QEMU)}
	for _, a := range v.args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
