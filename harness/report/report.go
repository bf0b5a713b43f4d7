// Package report holds a run's results as typed records and writes them
// out: results.json, a JUnit XML file for CI, and the human summary. All
// three read the same records.
package report

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Status of a check, and verdict of a run.
const (
	Pass  = "pass"
	Fail  = "fail"
	Error = "error" // the check could not be made
)

// Check is one comparison of an observed value with an expected one.
type Check struct {
	Scenario string `json:"scenario"`
	Mode     string `json:"mode"` // "vanilla" (Pageman not loaded) or "pageman"
	Step     string `json:"step"` // "3 free big" or a phase such as "setup"
	Name     string `json:"name"`
	Status   string `json:"status"`
	Expected any    `json:"expected"`
	Observed any    `json:"observed"`
	Detail   string `json:"detail,omitempty"` // where to look when it fails
}

// Finding is a kernel fault report seen in the guest's log.
type Finding struct {
	Kind     string `json:"kind"`
	Title    string `json:"title"`
	Scenario string `json:"scenario,omitempty"`
	Mode     string `json:"mode,omitempty"`
	Step     string `json:"step,omitempty"`
	Context  string `json:"context"`
}

// Results is everything a run found.
type Results struct {
	Run      string            `json:"run"`
	Started  time.Time         `json:"started"`
	Verdict  string            `json:"verdict"`
	Error    string            `json:"error,omitempty"` // why the harness could not finish
	Subject  string            `json:"subject"`
	Kernel   Kernel            `json:"kernel"`
	Accel    string            `json:"accel"`
	AccelWhy string            `json:"accel_reason"`
	QEMU     string            `json:"qemu_command,omitempty"`
	Timings  map[string]string `json:"timings"`
	Checks   []Check           `json:"checks"`
	Findings []Finding         `json:"findings"`
	// Divergences are the scenarios where the module under test fails
	// checks while the same steps without it (vanilla) pass them all.
	Divergences []Divergence `json:"divergences"`
	// Measurements are the bench steps' results.
	Measurements []Measurement `json:"measurements,omitempty"`
	Console      string        `json:"console_log"`
}

// Measurement is the cost of allocations and frees timed in the guest.
type Measurement struct {
	Scenario string  `json:"scenario"`
	Mode     string  `json:"mode"`
	Step     string  `json:"step"`
	Path     string  `json:"path"`
	Size     uint64  `json:"size"`
	Count    uint64  `json:"count"`
	NsPerOp  float64 `json:"ns_per_op"` // one allocation and its free
}

// Divergence is a scenario where Pageman diverges from the model while
// the base behaviour does not.
type Divergence struct {
	Scenario string `json:"scenario"`
	Failed   int    `json:"failed_checks"`
	First    Check  `json:"first"`
}

// Kernel identifies the kernel under test.
type Kernel struct {
	Version string `json:"version"`
	Image   string `json:"image"`
	Tree    string `json:"build_tree"`
	Key     string `json:"cache_key,omitempty"`
	Cached  bool   `json:"cached"`
}

// Decide sets the verdict: error if the harness could not finish, else
// fail if any check failed, error if any could not be made, else pass.
func (r *Results) Decide() {
	r.Divergences = divergences(r.Checks)
	failed, errored := false, r.Error != ""
	for _, c := range r.Checks {
		failed = failed || c.Status == Fail
		errored = errored || c.Status == Error
	}
	switch {
	case r.Error != "":
		r.Verdict = Error
	case failed:
		r.Verdict = Fail
	case errored || len(r.Checks) == 0:
		r.Verdict = Error
	default:
		r.Verdict = Pass
	}
}

// divergences finds the scenarios whose pageman mode failed checks while
// their vanilla mode ran and failed none.
func divergences(checks []Check) []Divergence {
	vanillaRan, vanillaFailed := map[string]bool{}, map[string]bool{}
	var order []string
	byScenario := map[string]*Divergence{}
	for _, c := range checks {
		switch {
		case c.Mode == "vanilla":
			vanillaRan[c.Scenario] = true
			vanillaFailed[c.Scenario] = vanillaFailed[c.Scenario] || c.Status != Pass
		case c.Mode == "pageman" && c.Status == Fail:
			d := byScenario[c.Scenario]
			if d == nil {
				d = &Divergence{Scenario: c.Scenario, First: c}
				byScenario[c.Scenario] = d
				order = append(order, c.Scenario)
			}
			d.Failed++
		}
	}
	out := []Divergence{}
	for _, s := range order {
		if vanillaRan[s] && !vanillaFailed[s] {
			out = append(out, *byScenario[s])
		}
	}
	return out
}

// ExitCode is what the harness exits with: 0 pass, 1 a check failed, 2 the
// harness could not run.
func (r *Results) ExitCode() int {
	switch r.Verdict {
	case Pass:
		return 0
	case Fail:
		return 1
	}
	return 2
}

// WriteJSON writes results.json.
func (r *Results) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	ClassName string        `xml:"classname,attr"`
	Failure   *junitProblem `xml:"failure,omitempty"`
	Error     *junitProblem `xml:"error,omitempty"`
}

type junitProblem struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes one test suite per scenario and mode, one test case
// per check; findings become failed cases of their step.
func (r *Results) WriteJUnit(path string) error {
	suites := map[string]*junitSuite{}
	var names []string
	suite := func(name string) *junitSuite {
		if s, ok := suites[name]; ok {
			return s
		}
		suites[name] = &junitSuite{Name: name}
		names = append(names, name)
		return suites[name]
	}
	for _, c := range r.Checks {
		s := suite(c.Scenario + "/" + c.Mode)
		jc := junitCase{Name: c.Step + ": " + c.Name, ClassName: "pageman-harness." + c.Scenario + "." + c.Mode}
		msg := fmt.Sprintf("expected %s, observed %s", Show(c.Expected), Show(c.Observed))
		switch c.Status {
		case Fail:
			jc.Failure = &junitProblem{Message: msg, Text: c.Detail}
			s.Failures++
		case Error:
			jc.Error = &junitProblem{Message: msg, Text: c.Detail}
			s.Errors++
		}
		s.Tests++
		s.Cases = append(s.Cases, jc)
	}
	if r.Error != "" {
		s := suite("harness")
		s.Tests++
		s.Errors++
		s.Cases = append(s.Cases, junitCase{Name: "run", ClassName: "pageman-harness", Error: &junitProblem{Message: r.Error}})
	}
	out := junitSuites{}
	for _, n := range names {
		out.Suites = append(out.Suites, *suites[n])
	}
	b, err := xml.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append([]byte(xml.Header), append(b, '\n')...), 0o644)
}

// Show renders an expected or observed value on one line.
func Show(v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		return v
	case []string:
		return "[" + strings.Join(v, "; ") + "]"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// PrintSummary writes the human summary: one line per step with the
// checks it passed, every failed or errored check in full, the findings,
// and the verdict.
func (r *Results) PrintSummary(w io.Writer) {
	type key struct{ scenario, mode, step string }
	var order []key
	byStep := map[key][]Check{}
	for _, c := range r.Checks {
		k := key{c.Scenario, c.Mode, c.Step}
		if _, ok := byStep[k]; !ok {
			order = append(order, k)
		}
		byStep[k] = append(byStep[k], c)
	}
	counts := map[string]int{}
	for _, k := range order {
		checks := byStep[k]
		status := Pass
		var names []string
		for _, c := range checks {
			counts[c.Status]++
			names = append(names, c.Name)
			if c.Status != Pass && status != Fail {
				status = c.Status
			}
		}
		fmt.Fprintf(w, "%-5s %s/%s  %s  [%s]\n", strings.ToUpper(status), k.scenario, k.mode, k.step, strings.Join(names, " "))
		for _, c := range checks {
			if c.Status == Pass {
				continue
			}
			fmt.Fprintf(w, "      %s %s: expected %s, observed %s\n", strings.ToUpper(c.Status), c.Name, Show(c.Expected), Show(c.Observed))
			if c.Detail != "" {
				fmt.Fprintf(w, "        %s\n", strings.ReplaceAll(strings.TrimSpace(c.Detail), "\n", "\n        "))
			}
		}
	}
	titles := map[string]int{}
	for _, f := range r.Findings {
		where := f.Step
		if f.Scenario != "" {
			where = f.Scenario + "/" + f.Mode + " " + f.Step
		}
		titles[f.Kind+": "+f.Title+" ("+where+")"]++
	}
	var ts []string
	for t := range titles {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	for _, t := range ts {
		fmt.Fprintf(w, "FINDING %s x%d\n", t, titles[t])
	}
	for _, d := range r.Divergences {
		fmt.Fprintf(w, "DIVERGES %s: with the module loaded %d checks fail that pass without it; first %s %s: expected %s, observed %s\n",
			d.Scenario, d.Failed, d.First.Step, d.First.Name, Show(d.First.Expected), Show(d.First.Observed))
	}
	if r.Error != "" {
		fmt.Fprintf(w, "ERROR %s\n", r.Error)
	}
	fmt.Fprintf(w, "verdict: %s (%d checks passed, %d failed, %d errors; subject %s, kernel %s, accel %s)\n",
		r.Verdict, counts[Pass], counts[Fail], counts[Error], r.Subject, r.Kernel.Version, r.Accel)
}
