// Package findings scans a guest's console and kernel log for reports of
// kernel faults. Knowledge of the report formats is the pattern table
// below: a new format is a new row. Each finding gets a normalised title
// (addresses, numbers and offsets removed) so the same fault always has the
// same title.
package findings

import (
	"regexp"
	"strings"
)

// Finding is one fault report.
type Finding struct {
	Kind    string // e.g. "BUG", "WARNING", "panic"
	Title   string // normalised, stable across runs
	Line    int    // 1-based line of the report in the scanned text
	Offset  int    // byte offset of that line in the scanned text
	Context string // the report's first line and the lines after it
}

type pattern struct {
	kind  string
	re    *regexp.Regexp
	title string // template using the expression's submatches ($1)
}

// Ordered: the first pattern that matches a line wins.
var patterns = []pattern{
	{"KASAN", regexp.MustCompile(`BUG: KASAN: (\S+) in (\S+)`), "KASAN: $1 in $2"},
	{"KFENCE", regexp.MustCompile(`BUG: KFENCE: (.+)`), "KFENCE: $1"},
	{"soft lockup", regexp.MustCompile(`watchdog: BUG: soft lockup`), "soft lockup"},
	{"BUG", regexp.MustCompile(`BUG: Bad page state in process`), "BUG: Bad page state"},
	{"BUG", regexp.MustCompile(`BUG: Bad rss-counter state`), "BUG: Bad rss-counter state"},
	{"BUG", regexp.MustCompile(`kernel BUG at ([^!]+)!`), "kernel BUG at $1"},
	{"BUG", regexp.MustCompile(`BUG: (.+)`), "BUG: $1"},
	{"Oops", regexp.MustCompile(`general protection fault`), "general protection fault"},
	{"Oops", regexp.MustCompile(`Oops: (.+)`), "Oops: $1"},
	{"WARNING", regexp.MustCompile(`WARNING: CPU: \d+ PID: \d+ at (\S+)`), "WARNING at $1"},
	{"WARNING", regexp.MustCompile(`WARNING: (.+)`), "WARNING: $1"},
	{"hung task", regexp.MustCompile(`INFO: task (\S+):\d+ blocked for more than`), "hung task $1"},
	{"RCU stall", regexp.MustCompile(`rcu: INFO: \S+ (detected stalls|self-detected stall)`), "RCU stall"},
	{"panic", regexp.MustCompile(`Kernel panic - not syncing: (.+)`), "panic: $1"},
}

var (
	timestamp = regexp.MustCompile(`^\s*\[\s*\d+\.\d+\]\s?`)
	hexNumber = regexp.MustCompile(`0x[0-9a-fA-F]+|\b[0-9a-f]{8,16}\b`)
	symOffset = regexp.MustCompile(`\+0x[0-9a-f]+/0x[0-9a-f]+`)
	number    = regexp.MustCompile(`\b\d+\b`)
	spaces    = regexp.MustCompile(`\s+`)
)

// normalise removes what differs between two reports of the same fault.
func normalise(title string) string {
	title = symOffset.ReplaceAllString(title, "")
	title = hexNumber.ReplaceAllString(title, "ADDR")
	title = number.ReplaceAllString(title, "N")
	return strings.TrimSpace(spaces.ReplaceAllString(title, " "))
}

// contextLines is how many lines of a report are kept after its first.
const contextLines = 12

// Scan returns the findings in text, in order.
func Scan(text string) []Finding {
	lines := strings.Split(text, "\n")
	var out []Finding
	offset := 0
	for i, raw := range lines {
		lineStart := offset
		offset += len(raw) + 1
		line := timestamp.ReplaceAllString(strings.TrimRight(raw, "\r"), "")
		for _, p := range patterns {
			m := p.re.FindStringSubmatchIndex(line)
			if m == nil {
				continue
			}
			title := string(p.re.ExpandString(nil, p.title, line, m))
			end := min(len(lines), i+1+contextLines)
			out = append(out, Finding{
				Kind:    p.kind,
				Title:   normalise(title),
				Line:    i + 1,
				Offset:  lineStart,
				Context: strings.Join(lines[i:end], "\n"),
			})
			break
		}
	}
	return out
}
