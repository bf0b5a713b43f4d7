// Package ftrace parses the text of the tracefs "trace" file into events.
// The harness enables kmem:kmalloc, kmem:kfree, kmem:mm_page_alloc and
// kmem:mm_page_free; the parser keeps every event's fields as text and
// offers typed access to the numbers.
package ftrace

import (
	"fmt"
	"strconv"
	"strings"
)

// Event is one trace line.
type Event struct {
	Task   string // "comm-pid"
	Time   string // timestamp as printed
	Name   string // e.g. "mm_page_free"
	Fields map[string]string
	Line   string // the line as read, for reports
}

// Uint returns a numeric field (decimal or 0x-hex).
func (e Event) Uint(name string) (uint64, error) {
	v, ok := e.Fields[name]
	if !ok {
		return 0, fmt.Errorf("%s event has no %s field: %s", e.Name, name, e.Line)
	}
	n, err := strconv.ParseUint(v, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("%s event field %s=%q: %w", e.Name, name, v, err)
	}
	return n, nil
}

// Int returns a signed numeric field, such as node=-1.
func (e Event) Int(name string) (int64, error) {
	v, ok := e.Fields[name]
	if !ok {
		return 0, fmt.Errorf("%s event has no %s field: %s", e.Name, name, e.Line)
	}
	n, err := strconv.ParseInt(v, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("%s event field %s=%q: %w", e.Name, name, v, err)
	}
	return n, nil
}

// Parse parses the trace file's text. Comment lines are skipped; a line
// that is not an event is an error naming its line number.
func Parse(text string) ([]Event, error) {
	var events []Event
	for i, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("trace line %d: %w", i+1, err)
		}
		events = append(events, e)
	}
	return events, nil
}

// parseLine parses "  comm-pid  [cpu] flags  12.345: name: k=v k=v".
func parseLine(line string) (Event, error) {
	open := strings.Index(line, "[")
	close := strings.Index(line, "]")
	if open < 0 || close < open {
		return Event{}, fmt.Errorf("no [cpu] in %q", line)
	}
	rest := line[close+1:]
	// "timestamp: name: fields"; the first ": " ends the timestamp.
	ts, rest, ok := strings.Cut(rest, ": ")
	if !ok {
		return Event{}, fmt.Errorf("no timestamp in %q", line)
	}
	name, body, _ := strings.Cut(rest, ": ")
	f := strings.Fields(ts)
	e := Event{
		Task:   strings.TrimSpace(line[:open]),
		Time:   f[len(f)-1],
		Name:   strings.TrimSpace(name),
		Fields: map[string]string{},
		Line:   line,
	}
	var last string
	for _, tok := range strings.Fields(body) {
		k, v, ok := strings.Cut(tok, "=")
		if !ok && last != "" {
			// "call_site=fn+0x1/0x2 [module]": the module belongs to the value.
			e.Fields[last] += " " + tok
			continue
		}
		e.Fields[k] = v
		last = k
	}
	return e, nil
}
