// Package probe speaks the probe module's request and reply format
// (guest/probe/pageman_probe.c): it formats requests and parses replies.
package probe

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// Reply is the probe module's answer to one request.
type Reply struct {
	Orders     int
	Status     int      // 0, or a negative errno
	Handle     int      // for alloc; -1 if none
	PFN        uint64   // head page frame of the object
	Order      int      // alloc: get_order() of the size
	Node       int      // alloc: node of the head page
	FreeBefore []uint64 // free blocks per order before the request
	FreeAfter  []uint64 // and after it
	// Unreclaimable slab bytes (SUnreclaim, exact) before and after.
	SUnreclaimBefore, SUnreclaimAfter int64

	// A bench request's result: N allocations and frees took BenchNs.
	BenchNs, BenchN uint64

	// The info request's constants.
	PageSize            uint64
	KmallocMaxCacheSize uint64
	Nodes               int
}

// Err returns the reply's status as an error, or nil.
func (r Reply) Err() error {
	if r.Status == 0 {
		return nil
	}
	return fmt.Errorf("probe: %w (errno %d)", syscall.Errno(-r.Status), -r.Status)
}

// FreePages returns the free pages counted by per-order block counts.
func FreePages(blocks []uint64) uint64 {
	var n uint64
	for order, c := range blocks {
		n += c << order
	}
	return n
}

// Alloc formats an allocation request; node < 0 names no node.
func Alloc(path string, size uint64, node int) string {
	if node < 0 {
		return fmt.Sprintf("alloc %s %d", path, size)
	}
	return fmt.Sprintf("alloc %s %d %d", path, size, node)
}

// Free formats a free request; size 0 frees with the allocation's size.
func Free(handle int, size uint64) string {
	if size == 0 {
		return fmt.Sprintf("free %d", handle)
	}
	return fmt.Sprintf("free %d %d", handle, size)
}

// Bench formats a request for the cost of n allocations and frees.
func Bench(path string, size uint64, n int) string {
	return fmt.Sprintf("bench %s %d %d", path, size, n)
}

// Info is the request for the guest's constants.
const Info = "info"

// ParseReply parses a reply.
func ParseReply(text string) (Reply, error) {
	r := Reply{Handle: -1}
	seen := false
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			return r, fmt.Errorf("probe reply line %d: %q", i+1, line)
		}
		var err error
		switch f[0] {
		case "orders":
			r.Orders, err = strconv.Atoi(f[1])
		case "status":
			r.Status, err = strconv.Atoi(f[1])
			seen = true
		case "handle":
			r.Handle, err = strconv.Atoi(f[1])
		case "pfn":
			r.PFN, err = strconv.ParseUint(f[1], 0, 64)
		case "sunreclaim_before":
			r.SUnreclaimBefore, err = strconv.ParseInt(f[1], 10, 64)
		case "sunreclaim_after":
			r.SUnreclaimAfter, err = strconv.ParseInt(f[1], 10, 64)
		case "bench_ns":
			r.BenchNs, err = strconv.ParseUint(f[1], 10, 64)
		case "bench_n":
			r.BenchN, err = strconv.ParseUint(f[1], 10, 64)
		case "order":
			r.Order, err = strconv.Atoi(f[1])
		case "nid":
			r.Node, err = strconv.Atoi(f[1])
		case "page_size":
			r.PageSize, err = strconv.ParseUint(f[1], 10, 64)
		case "kmalloc_max_cache_size":
			r.KmallocMaxCacheSize, err = strconv.ParseUint(f[1], 10, 64)
		case "nodes":
			r.Nodes, err = strconv.Atoi(f[1])
		case "free_before", "free_after":
			var counts []uint64
			for _, c := range f[1:] {
				n, perr := strconv.ParseUint(c, 10, 64)
				if perr != nil {
					err = perr
					break
				}
				counts = append(counts, n)
			}
			if f[0] == "free_before" {
				r.FreeBefore = counts
			} else {
				r.FreeAfter = counts
			}
		default:
			err = fmt.Errorf("unknown key %q", f[0])
		}
		if err != nil {
			return r, fmt.Errorf("probe reply line %d %q: %w", i+1, line, err)
		}
	}
	if !seen {
		return r, fmt.Errorf("probe reply without status: %q", text)
	}
	for _, c := range [][]uint64{r.FreeBefore, r.FreeAfter} {
		if c != nil && len(c) != r.Orders {
			return r, fmt.Errorf("probe reply: %d counts for %d orders", len(c), r.Orders)
		}
	}
	return r, nil
}
