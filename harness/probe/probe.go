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
	return fmt.Sprintf("bench %d %s %d", n, path, size)
}

// Info is the request for the guest's constants.
const Info = "info"

// ParseReply parses a reply.
func ParseReply(text string) (Reply, error) {
	r := Reply{Handle: -1}
	// Where each one-number key goes.
	ints := map[string]*int{"orders": &r.Orders, "status": &r.Status, "handle": &r.Handle,
		"order": &r.Order, "nid": &r.Node, "nodes": &r.Nodes}
	uints := map[string]*uint64{"pfn": &r.PFN, "bench_ns": &r.BenchNs, "bench_n": &r.BenchN,
		"page_size": &r.PageSize, "kmalloc_max_cache_size": &r.KmallocMaxCacheSize}
	int64s := map[string]*int64{"sunreclaim_before": &r.SUnreclaimBefore, "sunreclaim_after": &r.SUnreclaimAfter}
	lists := map[string]*[]uint64{"free_before": &r.FreeBefore, "free_after": &r.FreeAfter}
	seen := false
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			return r, fmt.Errorf("probe reply line %d: %q", i+1, line)
		}
		var err error
		if dst, ok := ints[f[0]]; ok {
			*dst, err = strconv.Atoi(f[1])
		} else if dst, ok := uints[f[0]]; ok {
			*dst, err = strconv.ParseUint(f[1], 0, 64)
		} else if dst, ok := int64s[f[0]]; ok {
			*dst, err = strconv.ParseInt(f[1], 10, 64)
		} else if dst, ok := lists[f[0]]; ok {
			*dst = nil
			for _, c := range f[1:] {
				var n uint64
				if n, err = strconv.ParseUint(c, 10, 64); err != nil {
					break
				}
				*dst = append(*dst, n)
			}
		} else {
			err = fmt.Errorf("unknown key %q", f[0])
		}
		if err != nil {
			return r, fmt.Errorf("probe reply line %d %q: %w", i+1, line, err)
		}
		seen = seen || f[0] == "status"
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
