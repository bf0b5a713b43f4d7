package report

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sample() *Results {
	return &Results{Subject: "pageman", Checks: []Check{
		{Scenario: "a", Mode: "vanilla", Step: "1 alloc x", Name: "events", Status: Pass},
		{Scenario: "a", Mode: "pageman", Step: "1 alloc x", Name: "events", Status: Fail, Expected: []string{"e1"}, Observed: []string{"e2"}},
		{Scenario: "b", Mode: "vanilla", Step: "1 alloc y", Name: "status", Status: Fail, Expected: "0", Observed: "ENOMEM"},
		{Scenario: "b", Mode: "pageman", Step: "1 alloc y", Name: "status", Status: Fail, Expected: "0", Observed: "ENOMEM"},
	}}
}

func TestVerdictAndDivergences(t *testing.T) {
	r := sample()
	r.Decide()
	if r.Verdict != Fail || r.ExitCode() != 1 {
		t.Errorf("verdict %q, exit %d", r.Verdict, r.ExitCode())
	}
	// Only a: b fails without the module too.
	if len(r.Divergences) != 1 || r.Divergences[0].Scenario != "a" || r.Divergences[0].Failed != 1 {
		t.Errorf("divergences %+v", r.Divergences)
	}
	r = &Results{Error: "no kernel"}
	r.Decide()
	if r.Verdict != Error || r.ExitCode() != 2 {
		t.Errorf("harness error: verdict %q, exit %d", r.Verdict, r.ExitCode())
	}
	r = &Results{}
	r.Decide()
	if r.Verdict != Error {
		t.Errorf("no checks at all gave verdict %q", r.Verdict)
	}
}

func TestJUnitAndSummary(t *testing.T) {
	r := sample()
	r.Decide()
	path := filepath.Join(t.TempDir(), "junit.xml")
	if err := r.WriteJUnit(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var suites junitSuites
	if err := xml.Unmarshal(b, &suites); err != nil {
		t.Fatal(err)
	}
	if len(suites.Suites) != 4 || suites.Suites[1].Failures != 1 || suites.Suites[1].Cases[0].Failure == nil {
		t.Errorf("suites %+v", suites.Suites)
	}
	var sum strings.Builder
	r.PrintSummary(&sum)
	for _, want := range []string{"FAIL  a/pageman  1 alloc x  [events]", "expected [e1], observed [e2]", "DIVERGES a:", "verdict: fail (1 checks passed, 3 failed"} {
		if !strings.Contains(sum.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, sum.String())
		}
	}
}
