package reference

import (
	"errors"
	"fmt"
	"slices"
	"sort"
)

// Buddy is a whole buddy allocator over a range of pages: free lists per
// order, splitting a larger block when the wanted order has none, merging
// a freed block with its buddy while the buddy is free. It has the
// kernel's invariants, not its choices: which free block of an order the
// kernel takes depends on history the model cannot see, so Buddy takes the
// lowest, and properties over it hold for any choice.
type Buddy struct {
	orders int
	pages  uint64
	free   []map[uint64]bool // free[order][first page]
}

// NewBuddy returns an allocator of pages pages (a multiple of the largest
// block), all free.
func NewBuddy(orders int, pages uint64) (*Buddy, error) {
	if orders < 1 || orders > 20 {
		return nil, fmt.Errorf("number of orders %d out of range", orders)
	}
	top := uint64(1) << (orders - 1)
	if pages == 0 || pages%top != 0 {
		return nil, fmt.Errorf("%d pages is not a multiple of the largest block (%d pages)", pages, top)
	}
	b := &Buddy{orders: orders, pages: pages, free: make([]map[uint64]bool, orders)}
	for o := range b.free {
		b.free[o] = map[uint64]bool{}
	}
	for p := uint64(0); p < pages; p += top {
		b.free[orders-1][p] = true
	}
	return b, nil
}

// ErrNoMemory is an allocation no free block can serve.
var ErrNoMemory = errors.New("no free block large enough")

// Alloc takes a block of the given order and returns its first page.
func (b *Buddy) Alloc(order int) (uint64, error) {
	if order < 0 || order >= b.orders {
		return 0, fmt.Errorf("order %d out of range", order)
	}
	for k := order; k < b.orders; k++ {
		if len(b.free[k]) == 0 {
			continue
		}
		p := lowest(b.free[k])
		delete(b.free[k], p)
		for k > order { // split: the upper half goes back, one order down
			k--
			b.free[k][p+1<<k] = true
		}
		return p, nil
	}
	return 0, ErrNoMemory
}

// Free gives back the naturally aligned block of the given order at page
// p, merging it with its buddy while the buddy is free.
func (b *Buddy) Free(p uint64, order int) error {
	if order < 0 || order >= b.orders || p%(1<<order) != 0 || p+1<<order > b.pages {
		return fmt.Errorf("block [%d,+%d) is not an aligned block of order %d", p, 1<<order, order)
	}
	if o, q, ok := b.freeBlockAt(p, order); ok {
		return fmt.Errorf("double free: page %d is in the free block [%d,+%d)", p, q, 1<<o)
	}
	for order < b.orders-1 {
		buddy := p ^ 1<<order
		if !b.free[order][buddy] {
			break
		}
		delete(b.free[order], buddy)
		p &^= 1 << order
		order++
	}
	b.free[order][p] = true
	return nil
}

// freeBlockAt finds a free block that overlaps [p, p+2^order).
func (b *Buddy) freeBlockAt(p uint64, order int) (int, uint64, bool) {
	for o := 0; o < b.orders; o++ {
		for q := range b.free[o] {
			if q < p+1<<order && p < q+1<<o {
				return o, q, true
			}
		}
	}
	return 0, 0, false
}

// FreeCounts returns the number of free blocks per order, as
// /proc/buddyinfo prints them.
func (b *Buddy) FreeCounts() []uint64 {
	out := make([]uint64, b.orders)
	for o, m := range b.free {
		out[o] = uint64(len(m))
	}
	return out
}

// FreePages returns the number of free pages.
func (b *Buddy) FreePages() uint64 {
	var n uint64
	for o, m := range b.free {
		n += uint64(len(m)) << o
	}
	return n
}

// Check verifies the allocator's invariants: free blocks aligned, inside
// the range and disjoint, and no two free buddies left unmerged.
func (b *Buddy) Check() error {
	var blocks []Block
	for o, m := range b.free {
		for p := range m {
			if p%(1<<o) != 0 || p+1<<o > b.pages {
				return fmt.Errorf("free block [%d,+%d) of order %d misaligned or out of range", p, 1<<o, o)
			}
			if o < b.orders-1 && m[p^1<<o] {
				return fmt.Errorf("free buddies [%d] and [%d] of order %d not merged", p, p^1<<o, o)
			}
			blocks = append(blocks, Block{Offset: p, Order: o})
		}
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].Offset < blocks[j].Offset })
	for i := 1; i < len(blocks); i++ {
		prev := blocks[i-1]
		if prev.Offset+1<<prev.Order > blocks[i].Offset {
			return fmt.Errorf("free blocks %v and %v overlap", prev, blocks[i])
		}
	}
	return nil
}

func lowest(m map[uint64]bool) uint64 {
	first := true
	var low uint64
	for p := range m {
		if first || p < low {
			low, first = p, false
		}
	}
	return low
}

// SplitDelta is the change of free blocks per order when a block of order
// n is taken by splitting one of order k >= n: one fewer of order k, one
// more of each order n..k-1.
func SplitDelta(orders, n, k int) []int64 {
	d := make([]int64, orders)
	d[k]--
	for o := n; o < k; o++ {
		d[o]++
	}
	return d
}

// AllocDelta is the change of free blocks per order that the model
// predicts for allocation a when its block is split from order k: the
// split, then the blocks given back, which cannot merge (their buddies
// hold kept pages). The vanilla kernel frees an alloc_pages_exact tail
// page by page, but those pages merge into exactly the blocks Fit&Free
// gives back, so both behaviours predict the same per-order change.
func AllocDelta(orders int, a Alloc, k int) []int64 {
	d := SplitDelta(orders, a.Order, k)
	for _, b := range FitAndFree(a.Order, a.Kept) { // none when all is kept
		d[b.Order]++
	}
	return d
}

// ExplainAlloc returns the order the block was split from if the observed
// change of free blocks per order is one AllocDelta allows.
func ExplainAlloc(delta []int64, a Alloc) (int, bool) {
	for k := a.Order; k < len(delta); k++ {
		if slices.Equal(AllocDelta(len(delta), a, k), delta) {
			return k, true
		}
	}
	return 0, false
}
