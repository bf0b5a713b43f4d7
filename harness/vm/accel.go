package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Accel is the outcome of choosing an accelerator.
type Accel struct {
	Name   string // "kvm" or "tcg"
	Reason string // why, for the report
}

// kvmProofDeadline bounds the KVM trial boot. A working KVM prints the
// kernel banner well within a second; a broken one (no nested
// virtualisation) hangs forever after the firmware, or QEMU aborts.
const kvmProofDeadline = 15 * time.Second

// ChooseAccel resolves "auto", "kvm" or "tcg". For auto, KVM is used only
// after a trial boot of kernel printed its banner within a deadline: an
// openable /dev/kvm proves nothing (guests hang on hosts without nested
// virtualisation). The verdict is cached in cacheDir per host and QEMU,
// so the trial costs once.
func ChooseAccel(ctx context.Context, want, qemu, kernel, cacheDir string) (Accel, error) {
	switch want {
	case "tcg":
		return Accel{"tcg", "requested with --accel tcg"}, nil
	case "kvm":
		return Accel{"kvm", "requested with --accel kvm"}, nil
	case "auto", "":
	default:
		return Accel{}, fmt.Errorf("--accel %q: want auto, kvm or tcg", want)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return Accel{"tcg", fmt.Sprintf("/dev/kvm unusable (%v)", err)}, nil
	}
	f.Close()
	key, err := kvmVerdictKey(ctx, qemu)
	if err != nil {
		return Accel{}, err
	}
	path := filepath.Join(cacheDir, "kvm-verdict", key)
	if b, err := os.ReadFile(path); err == nil {
		name, reason, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		return Accel{name, reason + " (cached verdict " + path + ")"}, nil
	}
	a := proveKVM(ctx, qemu, kernel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		_ = os.WriteFile(path, []byte(a.Name+" "+a.Reason+"\n"), 0o644)
	}
	return a, nil
}

// proveKVM boots kernel under KVM with no initramfs and waits for its
// banner on the serial console.
func proveKVM(ctx context.Context, qemu, kernel string) Accel {
	ctx, cancel := context.WithTimeout(ctx, kvmProofDeadline)
	defer cancel()
	dir, err := os.MkdirTemp("", "pageman-kvm-proof-")
	if err != nil {
		return Accel{"tcg", fmt.Sprintf("KVM trial not run: %v", err)}
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	c, err := newConsole(filepath.Join(dir, "console.log"))
	if err != nil {
		return Accel{"tcg", fmt.Sprintf("KVM trial not run: %v", err)}
	}
	cmd := exec.Command(qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", "kvm", "-cpu", cpuModel("kvm"), "-m", "256", "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1", "-serial", "stdio")
	cmd.SysProcAttr = guardAttr()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr // QEMU's own errors say why KVM failed
	out, err := cmd.StdoutPipe()
	if err != nil {
		return Accel{"tcg", fmt.Sprintf("KVM trial not run: %v", err)}
	}
	if err := cmd.Start(); err != nil {
		return Accel{"tcg", fmt.Sprintf("KVM trial not run: %v", err)}
	}
	go c.copyFrom(out)
	_, err = c.WaitFor(ctx, 0, "Linux version")
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err != nil {
		return Accel{"tcg", fmt.Sprintf("/dev/kvm opens but a KVM trial guest printed no kernel banner (deadline %s): %v; QEMU said %q: KVM does not work here",
			kvmProofDeadline, err, strings.TrimSpace(stderr.String()))}
	}
	return Accel{"kvm", fmt.Sprintf("KVM trial boot printed the kernel banner in %.1fs", time.Since(start).Seconds())}
}

// cpuModel is the CPU a guest gets: the host's under KVM, QEMU's fullest
// emulated one under TCG (it has RDRAND, which seeds the guest's RNG).
func cpuModel(accel string) string {
	if accel == "kvm" {
		return "host"
	}
	return "max"
}

// kvmVerdictKey names what the verdict depends on: the CPU's flags, the
// host kernel and QEMU's version. Not the guest kernel: a new build must
// not pay for a new trial on a host where KVM hangs.
func kvmVerdictKey(ctx context.Context, qemu string) (string, error) {
	h := sha256.New()
	ver, err := exec.CommandContext(ctx, qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", qemu, err)
	}
	h.Write(ver)
	if cpu, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(cpu), "\n") {
			if strings.HasPrefix(line, "flags") {
				h.Write([]byte(line))
				break
			}
		}
	}
	if rel, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Write(rel)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
