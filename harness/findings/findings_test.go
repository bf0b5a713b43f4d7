package findings

import (
	"os"
	"testing"
)

// A whole console of a passing run: boot, module loads, every step. No
// line of it is a finding.
func TestCleanConsoleHasNoFindings(t *testing.T) {
	b, err := os.ReadFile("testdata/clean-run.console")
	if err != nil {
		t.Fatal(err)
	}
	if f := Scan(string(b)); len(f) != 0 {
		t.Errorf("findings in a clean console: %+v", f)
	}
}

func BenchmarkScanCapturedConsole(b *testing.B) {
	data, err := os.ReadFile("testdata/clean-run.console")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		Scan(string(data))
	}
}
