package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The corpus of broken subjects: each must end with the right exit code,
// a titled finding and the console tail, within a bounded time.
func TestBrokenSubjects(t *testing.T) {
	bin := bootingHarness(t)
	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		verdict string
		finding string // "KIND: TITLE" prefix, as in results.json
		within  time.Duration
		// tail is in the summary when it shows the guest's last words:
		// the console's tail, or the step's kernel log if the guest lives.
		tail string
	}{
		{"kernel panics at boot", []string{"--scenario", "scenarios/pages-exact.scn", "--append", "init=/nonexistent rdinit=/nonexistent"},
			1, "fail", "panic: panic: Requested init /nonexistent failed", time.Minute, "last lines:"},
		{"module oopses on load", []string{"--scenario", "harness/e2e/testdata/load-module.scn", "--module", "guest/broken/oops-on-load"},
			1, "fail", "BUG: BUG: kernel NULL pointer dereference in oops_on_load_init", time.Minute, "last lines:"},
		{"probe step oopses", []string{"--scenario", "harness/e2e/testdata/fault-oops.scn"},
			1, "fail", "BUG: BUG: kernel NULL pointer dereference in probe_write", time.Minute, "last lines:"},
		{"probe step warns", []string{"--scenario", "harness/e2e/testdata/fault-warn.scn"},
			1, "fail", "WARNING: WARNING in probe_write", time.Minute, "WARNING: CPU: 0 PID:"},
		{"probe step hangs the guest", []string{"--scenario", "harness/e2e/testdata/fault-hang.scn"},
			1, "fail", "no output: no output from the guest", 90 * time.Second, "last lines:"},
		{"probe step blocks for good", []string{"--scenario", "harness/e2e/testdata/fault-block.scn"},
			1, "fail", "hung task: hung task uinit", 90 * time.Second, "last lines:"},
		{"guest SSH server killed", []string{"--scenario", "harness/e2e/testdata/fault-kill-ssh.scn"},
			2, "error", "lost connection: lost connection to the guest", time.Minute, "last lines:"},
		{"QEMU killed", []string{"--scenario", "harness/e2e/testdata/fault-kill-qemu.scn"},
			2, "error", "QEMU exited: QEMU exited without a kernel report", time.Minute, "last lines:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			r := runHarness(t, bin, append(tc.args, "--results", out)...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d", r.code, tc.code)
			}
			res, _ := readResults(t, out)
			if took := verdictTime(t, res, r.took); took > tc.within {
				t.Errorf("verdict %s after the build, want within %s", took.Round(time.Second), tc.within)
			} else {
				t.Logf("exit code %d, verdict %s after the build", r.code, took.Round(10*time.Millisecond))
			}
			if res.Verdict != tc.verdict {
				t.Errorf("verdict %q, want %q", res.Verdict, tc.verdict)
			}
			var titles []string
			found := false
			for _, f := range res.Findings {
				title := f.Kind + ": " + f.Title
				titles = append(titles, title)
				found = found || strings.HasPrefix(title, tc.finding)
			}
			if !found {
				t.Errorf("no finding %q in %q", tc.finding, titles)
			}
			if !strings.Contains(r.stdout, tc.tail) {
				t.Errorf("the summary does not show the guest's last words (%q)", tc.tail)
			}
			if n := qemuLeft(t, out); n != 0 {
				t.Errorf("%d QEMU processes of the run left after it", n)
			}
		})
	}
}

// A scenario file that does not exist is an error naming it.
func TestMissingScenarioFile(t *testing.T) {
	bin := harness(t)
	r := runHarness(t, bin, "--scenario", "no/such.scn", "--results", t.TempDir(), "--skip-deps")
	if r.code != 2 || !strings.Contains(r.stdout, "no/such.scn: no such file") {
		t.Errorf("exit code %d (want 2), output:\n%s", r.code, r.stdout)
	}
}

// QEMU never outlives the harness: not after SIGTERM (the harness stops
// it and writes its results), not after SIGKILL (PDEATHSIG). While QEMU
// runs, its only listening sockets are on 127.0.0.1.
func TestNoQEMUSurvivesTheHarness(t *testing.T) {
	bin := bootingHarness(t)
	// Orphans of the killed harness become this process's children, so
	// that a QEMU ended by PDEATHSIG is reaped here, not left a zombie.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			out := t.TempDir()
			cmd := command(bin, "run", "--scenario", "harness/e2e/testdata/fault-hang.scn", "--results", out)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Once the guest probes, the harness's QEMU child is the guest's
			// (before, it may be the short KVM trial).
			waitForFile(t, out, "steps/*.json", 20*time.Minute) // a cold cache builds first
			qemu := waitForChild(t, cmd.Process.Pid, "qemu-system", time.Minute)
			checkLoopbackOnly(t, qemu)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			start := time.Now()
			if !reaped(qemu, 10*time.Second) {
				t.Errorf("QEMU (pid %d) still runs 10s after %s of the harness", qemu, sig)
			} else {
				t.Logf("QEMU gone %s after the harness ended by %s", time.Since(start).Round(time.Millisecond), sig)
			}
			if sig == syscall.SIGTERM {
				if code := cmd.ProcessState.ExitCode(); code != 2 {
					t.Errorf("exit code %d after SIGTERM (%v), want 2", code, err)
				}
				res, _ := readResults(t, out)
				if res.Verdict != "error" {
					t.Errorf("verdict %q after SIGTERM, want error", res.Verdict)
				}
			}
		})
	}
}

// waitForChild returns the pid of a child of parent whose command name
// starts with comm.
func waitForChild(t *testing.T, parent int, comm string, limit time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...
			s := string(stat)
			open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
			if open < 0 || close < open {
				continue
			}
			f := strings.Fields(s[close+1:])
			if len(f) > 1 && strings.HasPrefix(s[open+1:close], comm) && f[1] == strconv.Itoa(parent) {
				return pid
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %s child of pid %d within %s", comm, parent, limit)
	return 0
}

func waitForFile(t *testing.T, dir, name string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(dir, "*", name)); len(m) > 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %s under %s within %s", name, dir, limit)
}

// reaped waits for pid to end, reaping it if it is this process's child
// (as an orphan of the harness it is: see PR_SET_CHILD_SUBREAPER).
func reaped(pid int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid || err == unix.ECHILD {
			if err == unix.ECHILD && !gone(pid) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// gone reports whether no live process has this pid.
func gone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}

// checkLoopbackOnly reads the host's socket table: every TCP socket QEMU
// listens on must be bound to 127.0.0.1. No traffic is sent anywhere.
func checkLoopbackOnly(t *testing.T, pid int) {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	listeners := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			listeners++
			if !strings.HasPrefix(f[1], "0100007F:") {
				t.Errorf("QEMU listens on %s in %s, not on 127.0.0.1", f[1], table)
			}
		}
	}
	if listeners == 0 {
		t.Errorf("QEMU (pid %d) has no listening TCP socket: the SSH forward is missing", pid)
	}
}

type finding struct{ Kind, Title string }
