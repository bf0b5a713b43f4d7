// Package procfs parses the /proc files the harness reads from the guest:
// /proc/buddyinfo, /proc/meminfo and Pageman's /proc/pageman. The parsers
// are pure functions over text, tested on captures from a real guest.
package procfs

import (
	"fmt"
	"strconv"
	"strings"
)

// Zone is one line of /proc/buddyinfo: free blocks per order.
type Zone struct {
	Node int
	Name string
	Free []uint64 // Free[order] = number of free blocks of that order
}

// ParseBuddyinfo parses /proc/buddyinfo. Every zone must have the same
// number of orders; that number is the guest's, never a constant.
func ParseBuddyinfo(text string) ([]Zone, error) {
	var zones []Zone
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		// Node 0, zone    DMA32   1   2 ...
		head, counts, ok := strings.Cut(line, "zone")
		f := strings.Fields(counts)
		if !ok || len(f) < 2 {
			return nil, fmt.Errorf("buddyinfo line %d: %q: want \"Node N, zone NAME counts...\"", i+1, line)
		}
		node, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(strings.TrimPrefix(head, "Node")), ","))
		if err != nil {
			return nil, fmt.Errorf("buddyinfo line %d: node: %w", i+1, err)
		}
		z := Zone{Node: node, Name: f[0]}
		for _, c := range f[1:] {
			n, err := strconv.ParseUint(c, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("buddyinfo line %d: count %q: %w", i+1, c, err)
			}
			z.Free = append(z.Free, n)
		}
		if len(zones) > 0 && len(z.Free) != len(zones[0].Free) {
			return nil, fmt.Errorf("buddyinfo line %d: %d orders, line 1 has %d", i+1, len(z.Free), len(zones[0].Free))
		}
		zones = append(zones, z)
	}
	if len(zones) == 0 {
		return nil, fmt.Errorf("buddyinfo: no zones")
	}
	return zones, nil
}

// Orders returns the number of buddy orders in parsed buddyinfo.
func Orders(zones []Zone) int { return len(zones[0].Free) }

// ParseMeminfo parses /proc/meminfo into values in bytes (kB lines are
// multiplied out; bare numbers such as HugePages_Total stay as they are).
func ParseMeminfo(text string) (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f) == 0 || len(f) > 2 {
			return nil, fmt.Errorf("meminfo line %d: %q", i+1, line)
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("meminfo line %d: %w", i+1, err)
		}
		if len(f) == 2 {
			if f[1] != "kB" {
				return nil, fmt.Errorf("meminfo line %d: unit %q", i+1, f[1])
			}
			n *= 1024
		}
		out[name] = n
	}
	return out, nil
}

// ParseKeyValues parses "name value" lines such as /proc/pageman's.
func ParseKeyValues(text string) (map[string]int64, error) {
	out := map[string]int64{}
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: %q: want \"name value\"", i+1, line)
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		out[f[0]] = n
	}
	return out, nil
}
