// Package reference is the oracle of pageman-harness: a model of what the
// Linux page allocator does for each probe path, with and without Pageman's
// exact-fit rule. It knows nothing of VMs or of the harness; its inputs are
// the probe's own inputs (path, size) and facts read from the guest (page
// size, number of orders), and its outputs are the numbers a check expects.
package reference

import (
	"errors"
	"fmt"
)

// Path names an allocation entry point the probe module can call.
type Path string

// The probe paths, as the probe module spells them.
const (
	Kmalloc          Path = "kmalloc"
	KmallocNode      Path = "kmalloc_node"
	KmallocLarge     Path = "kmalloc_large"
	KmallocLargeNode Path = "kmalloc_large_node"
	PagesExact       Path = "pages_exact"
	PagesExactNid    Path = "pages_exact_nid"
)

// Paths lists every probe path.
var Paths = []Path{Kmalloc, KmallocNode, KmallocLarge, KmallocLargeNode, PagesExact, PagesExactNid}

// ParsePath returns the Path named s.
func ParsePath(s string) (Path, error) {
	for _, p := range Paths {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown probe path %q (want one of %v)", s, Paths)
}

// IsKmalloc reports whether objects of this path are freed with kfree.
func (p Path) IsKmalloc() bool { return p != PagesExact && p != PagesExactNid }

// Behaviour selects the allocator being modelled.
type Behaviour int

const (
	// Vanilla is the kernel without Pageman loaded: large kmalloc keeps a
	// whole compound block, alloc_pages_exact trims and frees page by page.
	Vanilla Behaviour = iota
	// Pageman is the kernel with the Pageman module loaded (Fit&Free on
	// allocation, Free&Fit on free).
	Pageman
)

func (b Behaviour) String() string {
	if b == Pageman {
		return "pageman"
	}
	return "vanilla"
}

// Config holds the facts about the guest the model needs.
type Config struct {
	PageSize uint64 // bytes per page, 4096 on x86_64
	Orders   int    // number of buddy orders, from /proc/buddyinfo
	// KmallocMaxCacheSize is the largest size kmalloc serves from a slab
	// cache; above it kmalloc goes to the page allocator. SLUB: 2 pages.
	KmallocMaxCacheSize uint64
}

// Block is a naturally aligned run of 2^Order pages at page Offset from the
// head of an allocation's block.
type Block struct {
	Offset uint64
	Order  int
}

func (b Block) String() string {
	return fmt.Sprintf("[%d,%d)o%d", b.Offset, b.Offset+1<<b.Order, b.Order)
}

// Counters are the values /proc/pageman must show.
type Counters struct {
	FittedAllocs int64
	FittedFrees  int64
	Live         int64
	PagesKept    int64
	PagesSaved   int64
}

// NoNode is NUMA_NO_NODE: the caller named no node.
const NoNode = -1

// Alloc is the model's prediction for one allocation.
type Alloc struct {
	Handle     int
	Path       Path
	Size       uint64
	Node       int     // node asked for, NoNode for paths without one
	Order      int     // order of the block taken from the buddy allocator
	Kept       uint64  // pages the caller holds afterwards
	Freed      []Block // blocks given back at once, in the order freed
	BytesAlloc uint64  // kmem:kmalloc bytes_alloc (kmalloc paths only)
	Fitted     bool    // Pageman kept a record of this block
	// Slab is a kmalloc served by a slab cache (size up to
	// KMALLOC_MAX_CACHE_SIZE): no block of its own, so no page events.
	Slab bool
	// SUnreclaim is the change of unreclaimable slab bytes: a large
	// kmalloc counts its pages there (a slab object's cache may or may not
	// need a new slab page, which the model cannot tell).
	SUnreclaim int64
}

// HasNode reports whether the path takes a node argument.
func (p Path) HasNode() bool {
	return p == KmallocNode || p == KmallocLargeNode || p == PagesExactNid
}

// Event is a trace event the model expects, with pages named by their
// offset from the head of the allocation's block.
type Event struct {
	Name       string // kmalloc, kfree, mm_page_alloc, mm_page_free
	Offset     uint64 // mm_page_*: first page, relative to the block head
	Order      int    // mm_page_*
	BytesReq   uint64 // kmalloc
	BytesAlloc uint64 // kmalloc
	Node       int    // kmalloc
}

func (e Event) String() string {
	switch e.Name {
	case "kmalloc":
		return fmt.Sprintf("kmalloc bytes_req=%d bytes_alloc=%d node=%d", e.BytesReq, e.BytesAlloc, e.Node)
	case "kfree":
		return "kfree"
	}
	return fmt.Sprintf("%s +%d order=%d", e.Name, e.Offset, e.Order)
}

// Events returns the trace events the allocation produces, in order: the
// block taken, the blocks given back, then (kmalloc paths) the kmalloc
// event, which the kernel emits once the allocator has returned.
func (a Alloc) Events() []Event {
	var ev []Event
	if !a.Slab { // a slab object has no block of its own
		ev = append(ev, Event{Name: "mm_page_alloc", Order: a.Order})
		for _, b := range a.Freed {
			ev = append(ev, Event{Name: "mm_page_free", Offset: b.Offset, Order: b.Order})
		}
	}
	if a.Path.IsKmalloc() {
		ev = append(ev, Event{Name: "kmalloc", BytesReq: a.Size, BytesAlloc: a.BytesAlloc, Node: a.Node})
	}
	return ev
}

// Free is the model's prediction for one free.
type Free struct {
	Handle int
	Kfree  bool    // freed with kfree (emits a kfree event first)
	Freed  []Block // blocks given back, in the order freed
	Pages  uint64  // pages returned to the buddy allocator
	Slab   bool    // a slab object: no pages of its own
	// SUnreclaim is the change of unreclaimable slab bytes.
	SUnreclaim int64
}

// Events returns the trace events the free produces, in order.
func (f Free) Events() []Event {
	var ev []Event
	if f.Kfree {
		ev = append(ev, Event{Name: "kfree"})
	}
	for _, b := range f.Freed {
		ev = append(ev, Event{Name: "mm_page_free", Offset: b.Offset, Order: b.Order})
	}
	return ev
}

// ErrZeroSize is returned for an allocation of 0 bytes, which the probe
// refuses.
var ErrZeroSize = errors.New("size 0")

// ErrTooLarge is returned for a size above the largest order: the kernel
// must fail the allocation cleanly.
var ErrTooLarge = errors.New("size above the largest buddy order")

// ErrNotPageAllocator is returned for a kmalloc size served by a slab
// cache, which the model does not predict page by page.
var ErrNotPageAllocator = errors.New("kmalloc size served by a slab cache")

// Model follows one sequence of allocations and frees.
type Model struct {
	cfg       Config
	behaviour Behaviour
	live      map[int]Alloc
	next      int
	counters  Counters
}

// New returns a model of an allocator with no live objects.
func New(cfg Config, b Behaviour) (*Model, error) {
	if cfg.PageSize == 0 || cfg.PageSize&(cfg.PageSize-1) != 0 {
		return nil, fmt.Errorf("page size %d is not a power of two", cfg.PageSize)
	}
	if cfg.Orders < 1 || cfg.Orders > 20 {
		return nil, fmt.Errorf("number of orders %d out of range", cfg.Orders)
	}
	return &Model{cfg: cfg, behaviour: b, live: map[int]Alloc{}}, nil
}

// SetBehaviour switches the behaviour for the allocations that follow (the
// module was loaded or unloaded); live objects keep the way they were made.
func (m *Model) SetBehaviour(b Behaviour) { m.behaviour = b }

// Counters returns the Pageman counters the model expects now.
func (m *Model) Counters() Counters { return m.counters }

// Behaviour returns the behaviour being modelled.
func (m *Model) Behaviour() Behaviour { return m.behaviour }

// LivePages returns the pages held by live objects.
func (m *Model) LivePages() uint64 {
	var n uint64
	for _, a := range m.live {
		n += a.Kept
	}
	return n
}

// Pages returns the number of pages needed for size bytes.
func (m *Model) Pages(size uint64) uint64 { return (size + m.cfg.PageSize - 1) / m.cfg.PageSize }

// OrderFor returns get_order(size): the smallest order whose block holds size.
func (m *Model) OrderFor(size uint64) int {
	pages := m.Pages(size)
	order := 0
	for uint64(1)<<order < pages {
		order++
	}
	return order
}

// Alloc predicts an allocation of size bytes through path on node (NoNode
// for none) and records the object under the lowest free handle.
func (m *Model) Alloc(path Path, size uint64, node int) (Alloc, error) {
	if size == 0 {
		return Alloc{}, ErrZeroSize
	}
	if !path.HasNode() {
		node = NoNode
	}
	if path.IsKmalloc() && size <= m.cfg.KmallocMaxCacheSize {
		if path == KmallocLarge || path == KmallocLargeNode {
			// The probe refuses: the callee assumes a size above the caches.
			return Alloc{}, fmt.Errorf("%w: %s of %d <= %d", ErrNotPageAllocator, path, size, m.cfg.KmallocMaxCacheSize)
		}
		a := Alloc{Handle: m.slot(), Path: path, Size: size, Node: node, Slab: true, BytesAlloc: SlabObjectSize(size)}
		m.live[a.Handle] = a
		return a, nil
	}
	order := m.OrderFor(size)
	if order >= m.cfg.Orders {
		return Alloc{}, fmt.Errorf("%w: %d bytes needs order %d, largest is %d", ErrTooLarge, size, order, m.cfg.Orders-1)
	}
	need := m.Pages(size)
	a := Alloc{Handle: m.slot(), Path: path, Size: size, Node: node, Order: order}
	whole := uint64(1) << order
	switch {
	case m.behaviour == Pageman && need < whole:
		a.Fitted = true
		a.Kept = need
		a.Freed = FitAndFree(order, need)
	case path.IsKmalloc():
		a.Kept = whole
	default: // vanilla make_alloc_exact: tail freed one page at a time
		a.Kept = need
		for off := need; off < whole; off++ {
			a.Freed = append(a.Freed, Block{Offset: off})
		}
	}
	if path.IsKmalloc() {
		a.BytesAlloc = a.Kept * m.cfg.PageSize
		a.SUnreclaim = int64(a.BytesAlloc)
	}
	if a.Fitted {
		m.counters.FittedAllocs++
		m.counters.Live++
		m.counters.PagesKept += int64(need)
		m.counters.PagesSaved += int64(whole - need)
	}
	m.live[a.Handle] = a
	return a, nil
}

// slot mirrors the probe module's handle choice: the lowest free slot.
func (m *Model) slot() int {
	for h := 0; ; h++ {
		if _, used := m.live[h]; !used {
			return h
		}
	}
}

// Discard forgets a live object as if it had never been allocated, for an
// allocation the kernel failed where the model did not expect it to.
func (m *Model) Discard(handle int) {
	a, ok := m.live[handle]
	if !ok {
		return
	}
	if a.Fitted {
		m.counters.FittedAllocs--
		m.counters.Live--
		m.counters.PagesKept -= int64(a.Kept)
		m.counters.PagesSaved -= int64(uint64(1)<<a.Order - a.Kept)
	}
	delete(m.live, handle)
}

// Live returns the live object with the given handle.
func (m *Model) Live(handle int) (Alloc, bool) {
	a, ok := m.live[handle]
	return a, ok
}

// Free predicts the free of a live object. size is what the caller passes
// to free_pages_exact (0: the allocation's own size); kfree ignores it.
func (m *Model) Free(handle int, size uint64) (Free, error) {
	a, ok := m.live[handle]
	if !ok {
		return Free{}, fmt.Errorf("handle %d is not live", handle)
	}
	if size == 0 {
		size = a.Size
	}
	f := Free{Handle: handle, Kfree: a.Path.IsKmalloc(), Slab: a.Slab, SUnreclaim: -a.SUnreclaim}
	switch {
	case a.Slab:
	case a.Fitted:
		f.Freed = FreeAndFit(a.Order, a.Kept)
		m.counters.FittedFrees++
		m.counters.Live--
		m.counters.PagesKept -= int64(a.Kept)
	case a.Path.IsKmalloc():
		f.Freed = []Block{{Offset: 0, Order: a.Order}}
	default: // vanilla free_pages_exact: one page at a time, size as given
		for off := uint64(0); off < m.Pages(size); off++ {
			f.Freed = append(f.Freed, Block{Offset: off})
		}
	}
	for _, b := range f.Freed {
		f.Pages += 1 << b.Order
	}
	delete(m.live, handle)
	return f, nil
}

// SlabObjectSize is the size of the kmalloc cache object that serves size
// bytes (SLUB, x86_64: 8 to 8192 in powers of two, and 96 and 192).
func SlabObjectSize(size uint64) uint64 {
	switch {
	case size > 64 && size <= 96:
		return 96
	case size > 128 && size <= 192:
		return 192
	}
	n := uint64(8)
	for n < size {
		n <<= 1
	}
	return n
}

// FitAndFree returns the blocks Fit&Free gives back when keeping need pages
// of a fresh block of the given order: look at the two halves; if need fits
// in the left half, free the right half whole, else keep the left half and
// go on in the right half for the rest; repeat one order lower.
func FitAndFree(order int, need uint64) []Block {
	var freed []Block
	var base uint64
	for need < 1<<order {
		order--
		half := uint64(1) << order
		if need <= half {
			freed = append(freed, Block{Offset: base + half, Order: order})
		} else {
			base += half
			need -= half
		}
	}
	return freed
}

// FreeAndFit returns the blocks Free&Fit frees for need kept pages of a
// block of the given order: whole aligned blocks, halving the same way.
func FreeAndFit(order int, need uint64) []Block {
	var freed []Block
	var base uint64
	for need != 1<<order {
		order--
		half := uint64(1) << order
		if need > half {
			freed = append(freed, Block{Offset: base, Order: order})
			base += half
			need -= half
		}
	}
	return append(freed, Block{Offset: base, Order: order})
}
