// Package e2e runs the pageman-harness program as a user does: it builds
// the binary, runs it on the default kernel (a real kernel build, a real
// QEMU guest, real SSH and ftrace) and checks its exit code and results.
// These tests never skip themselves for a missing prerequisite: they fail
// and say what to install. Only -short skips them, and says so.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// root is the repository, two levels up from this package.
var root, _ = filepath.Abs(filepath.Join("..", ".."))

// harness builds the program once per test binary.
func harness(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pageman-harness")
	cmd := exec.Command("go", "build", "-o", bin, "./harness/cmd/pageman-harness")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building pageman-harness: %v\n%s", err, out)
	}
	return bin
}

type result struct {
	code   int
	stdout string
	stderr string
	took   time.Duration
}

// command prepares the program to run from the repository.
func command(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Dir = root
	return cmd
}

func runHarness(t *testing.T, bin string, args ...string) result {
	t.Helper()
	cmd := command(bin, append([]string{"run"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	default:
		t.Fatalf("running pageman-harness: %v", err)
	}
	t.Logf("pageman-harness run %s: exit %d in %s\nstdout:\n%s\nstderr (last 3000 bytes):\n%s",
		strings.Join(args, " "), r.code, r.took.Round(time.Second), r.stdout, tail(r.stderr, 3000))
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// bootingHarness is harness for a test that boots the guest: it needs the
// host tools, and only -short skips it (saying so).
func bootingHarness(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping an end-to-end run that boots a VM")
	}
	requireTools(t)
	return harness(t)
}

func requireTools(t *testing.T) {
	t.Helper()
	for tool, pkg := range map[string]string{"qemu-system-x86_64": "qemu-system-x86", "ccache": "ccache", "flex": "flex", "bison": "bison"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run `make deps` (or apt-get install %s) before the end-to-end tests", tool, pkg)
		}
	}
}

// qemuLeft counts the QEMU processes still running for a run whose
// results go under dir (their command line names its initramfs there), so
// that other QEMUs on the host do not count.
func qemuLeft(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "qemu-system") {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), dir) && !gone(atoi(e.Name())) {
			n++
		}
	}
	return n
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// verdictTime is how long the run took to its verdict once everything
// was built: a cold cache's kernel build is not the harness being slow.
func verdictTime(t *testing.T, res results, took time.Duration) time.Duration {
	t.Helper()
	for _, k := range []string{"kernel", "modules", "initramfs"} {
		if v, ok := res.Timings[k]; ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("timing %s=%q: %v", k, v, err)
			}
			took -= d
		}
	}
	return took
}

type results struct {
	Verdict string `json:"verdict"`
	Accel   string `json:"accel"`
	Console string `json:"console_log"`
	Checks  []struct {
		Scenario, Mode, Step, Name, Status string
		Expected, Observed                 any
	} `json:"checks"`
	Timings  map[string]string `json:"timings"`
	Findings []finding         `json:"findings"`
}

func readResults(t *testing.T, dir string) (results, string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*", "results.json"))
	if len(files) != 1 {
		t.Fatalf("want one results.json under %s, found %v", dir, files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", files[0], err)
	}
	return r, filepath.Dir(files[0])
}

// The main job: every shipped scenario on Debian's 6.1 with the Pageman
// series, in both modes, boots a real guest and passes every check.
func TestMainJobPasses(t *testing.T) {
	bin := bootingHarness(t)
	out := t.TempDir()
	r := runHarness(t, bin, "--results", out)
	if r.code != 0 {
		t.Fatalf("exit code %d, want 0", r.code)
	}
	res, dir := readResults(t, out)
	if res.Verdict != "pass" {
		t.Errorf("verdict %q, want pass", res.Verdict)
	}
	modes := map[string]int{}
	names := map[string]int{}
	for _, c := range res.Checks {
		if c.Status != "pass" {
			t.Errorf("check %s/%s %s %s: %s (expected %v, observed %v)", c.Scenario, c.Mode, c.Step, c.Name, c.Status, c.Expected, c.Observed)
		}
		modes[c.Mode]++
		names[c.Name]++
	}
	// Both behaviours ran, and each kind of observation was checked.
	for _, m := range []string{"vanilla", "pageman"} {
		if modes[m] == 0 {
			t.Errorf("no checks in mode %s", m)
		}
	}
	for _, n := range []string{"events", "pages_kept", "free_pages_delta", "bytes_alloc", "trace_node", "page_node",
		"pageman_counters", "kernel_log", "all_pages_back", "pages_freed", "module_unload", "sunreclaim_delta", "module_loaded", "buddy_delta"} {
		if names[n] == 0 {
			t.Errorf("no %s check in the results", n)
		}
	}
	for _, f := range []string{"junit.xml", "console.log"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s missing or empty in %s", f, dir)
		}
	}
	if !strings.Contains(r.stdout, "verdict: pass") {
		t.Errorf("summary does not end with the verdict:\n%s", r.stdout)
	}
	if n := qemuLeft(t, out); n != 0 {
		t.Errorf("%d QEMU processes of the run left after it", n)
	}
	t.Logf("timings: %v", res.Timings)
}

// A scenario with a syntax error stops the run before anything is built,
// with the file and line, and exit code 2.
func TestScenarioSyntaxError(t *testing.T) {
	bin := harness(t)
	bad := filepath.Join(t.TempDir(), "bad.scn")
	if err := os.WriteFile(bad, []byte("alloc a kmalloc 5p\nfree b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runHarness(t, bin, "--scenario", bad, "--results", t.TempDir(), "--skip-deps")
	if r.code != 2 {
		t.Errorf("exit code %d, want 2", r.code)
	}
	if !strings.Contains(r.stdout, bad+":2: free of \"b\"") {
		t.Errorf("output does not name %s:2:\n%s", bad, r.stdout)
	}
	if r.took > 30*time.Second {
		t.Errorf("took %s to reject a scenario file", r.took)
	}
}

// A kernel image that is not a kernel is refused before QEMU starts.
func TestNotAKernelImage(t *testing.T) {
	bin := harness(t)
	img := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(img, bytes.Repeat([]byte("not a kernel\n"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runHarness(t, bin, "--kernel-image", img, "--results", t.TempDir(), "--skip-deps")
	if r.code != 2 || !strings.Contains(r.stdout, "is not an x86 bzImage") {
		t.Errorf("exit code %d (want 2), output:\n%s", r.code, r.stdout)
	}
	r = runHarness(t, bin, "--kernel-image", img+".missing", "--results", t.TempDir(), "--skip-deps")
	if r.code != 2 || !strings.Contains(r.stdout, "no such file") {
		t.Errorf("missing image: exit code %d (want 2), output:\n%s", r.code, r.stdout)
	}
}

// One random sequence over every path, on the real guest, passes on the
// corrected Pageman (the model predicts every step of it).
func TestRandomSequencePasses(t *testing.T) {
	bin := bootingHarness(t)
	out := t.TempDir()
	r := runHarness(t, bin, "--seed", "20261204", "--ops", "40", "--results", out)
	if r.code != 0 {
		t.Fatalf("exit code %d, want 0", r.code)
	}
	res, _ := readResults(t, out)
	n := 0
	for _, c := range res.Checks {
		if strings.HasPrefix(c.Scenario, "random-") {
			n++
		}
	}
	if n < 100 {
		t.Errorf("only %d checks of the random sequence", n)
	}
}
