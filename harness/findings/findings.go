// Package findings scans a guest's console and kernel log for reports of
// kernel faults. Knowledge of the report formats is the pattern table
// below: a new format is a new row, and a new capture in testdata/ with the
// titles it must give. Each finding gets a normalised title (addresses,
// numbers and paths removed) so the same fault always has the same title.
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
	// inFunction titles the report by the function the kernel was in
	// (the first "RIP: 0010:" line of the report), as "KIND in FUNC".
	inFunction bool
	// after marks a line that only continues the report before it (an
	// Oops after its BUG line, the panic an oops causes): it is part of
	// that finding when one started at most this many lines before.
	after int
}

// Ordered: the first pattern that matches a line wins.
var patterns = []pattern{
	{kind: "KASAN", re: regexp.MustCompile(`BUG: KASAN: (\S+) in (\S+)`), title: "KASAN: $1 in $2"},
	{kind: "KFENCE", re: regexp.MustCompile(`BUG: KFENCE: (.+)`), title: "KFENCE: $1"},
	{kind: "soft lockup", re: regexp.MustCompile(`watchdog: BUG: soft lockup`), title: "soft lockup", inFunction: true},
	{kind: "BUG", re: regexp.MustCompile(`BUG: Bad page state in process`), title: "BUG: Bad page state"},
	{kind: "BUG", re: regexp.MustCompile(`BUG: Bad rss-counter state`), title: "BUG: Bad rss-counter state"},
	{kind: "BUG", re: regexp.MustCompile(`kernel BUG at ([^!]+)!`), title: "kernel BUG at $1"},
	{kind: "BUG", re: regexp.MustCompile(`BUG: (kernel NULL pointer dereference|unable to handle page fault)`), title: "BUG: $1", inFunction: true},
	{kind: "BUG", re: regexp.MustCompile(`BUG: (.+)`), title: "BUG: $1"},
	{kind: "Oops", re: regexp.MustCompile(`general protection fault`), title: "general protection fault", inFunction: true},
	{kind: "Oops", re: regexp.MustCompile(`Oops: `), title: "Oops", inFunction: true, after: 10},
	{kind: "WARNING", re: regexp.MustCompile(`WARNING: CPU: \d+ PID: \d+ at \S+ (\w+)\+`), title: "WARNING in $1"},
	{kind: "WARNING", re: regexp.MustCompile(`WARNING: (.+)`), title: "WARNING: $1"},
	{kind: "hung task", re: regexp.MustCompile(`INFO: task (\S+):\d+ blocked for more than`), title: "hung task $1"},
	{kind: "RCU stall", re: regexp.MustCompile(`rcu: INFO: \S+ (detected stalls|self-detected stall)`), title: "RCU stall"},
	{kind: "panic", re: regexp.MustCompile(`Kernel panic - not syncing: Fatal exception`), title: "panic: Fatal exception", after: 80},
	{kind: "panic", re: regexp.MustCompile(`Kernel panic - not syncing: (.+)`), title: "panic: $1"},
}

var (
	timestamp = regexp.MustCompile(`^\s*\[\s*\d+\.\d+\]\s?`)
	rip       = regexp.MustCompile(`RIP: 0010:(\w+)`)
	path      = regexp.MustCompile(`(/[\w.+-]+)+/([\w.+-]+)`)
	hexNumber = regexp.MustCompile(`0x[0-9a-fA-F]+|\b[0-9a-f]{8,16}\b`)
	symOffset = regexp.MustCompile(`\+0x[0-9a-f]+/0x[0-9a-f]+`)
	number    = regexp.MustCompile(`\b\d+\b`)
	spaces    = regexp.MustCompile(`\s+`)
)

// normalise removes what differs between two reports of the same fault.
func normalise(title string) string {
	title = symOffset.ReplaceAllString(title, "")
	title = path.ReplaceAllString(title, "$2")
	title = hexNumber.ReplaceAllString(title, "ADDR")
	title = number.ReplaceAllString(title, "N")
	return strings.TrimSpace(spaces.ReplaceAllString(title, " "))
}

// contextLines is how many lines of a report are kept after its first.
const contextLines = 30

// keywords are substrings one of which every pattern's match contains; a
// line with none of them is skipped without running the expressions.
var keywords = []string{"BUG", "Oops", "WARNING", "INFO:", "panic", "general protection"}

// Scan returns the findings in text, in order.
func Scan(text string) []Finding {
	lines := strings.Split(text, "\n")
	var out []Finding
	offset := 0
	for i, raw := range lines {
		lineStart := offset
		offset += len(raw) + 1
		if !containsAny(raw, keywords) {
			continue
		}
		line := timestamp.ReplaceAllString(strings.TrimRight(raw, "\r"), "")
		for _, p := range patterns {
			m := p.re.FindStringSubmatchIndex(line)
			if m == nil {
				continue
			}
			if p.after > 0 && len(out) > 0 && i+1-out[len(out)-1].Line <= p.after {
				break // continues the report before it
			}
			end := min(len(lines), i+1+contextLines)
			context := strings.Join(lines[i:end], "\n")
			title := string(p.re.ExpandString(nil, p.title, line, m))
			if p.inFunction {
				if fn := rip.FindStringSubmatch(context); fn != nil {
					title += " in " + fn[1]
				}
			}
			out = append(out, Finding{Kind: p.kind, Title: normalise(title), Line: i + 1, Offset: lineStart, Context: context})
			break
		}
	}
	return out
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
