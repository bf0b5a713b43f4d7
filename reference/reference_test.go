package reference

import (
	"errors"
	"reflect"
	"testing"
)

var testConfig = Config{PageSize: 4096, Orders: 11, KmallocMaxCacheSize: 8192}

// The worked example of DESIGN.md §2: r = 5 in an order-3 block.
func TestDesignExample(t *testing.T) {
	if got, want := FitAndFree(3, 5), []Block{{6, 1}, {5, 0}}; !reflect.DeepEqual(got, want) {
		t.Errorf("FitAndFree(3, 5) = %v, want %v", got, want)
	}
	if got, want := FreeAndFit(3, 5), []Block{{0, 2}, {4, 0}}; !reflect.DeepEqual(got, want) {
		t.Errorf("FreeAndFit(3, 5) = %v, want %v", got, want)
	}
}

// For every order and every need, Fit&Free's blocks and the kept pages tile
// the block exactly, and Free&Fit's blocks tile the kept pages exactly, each
// block naturally aligned.
func TestFitAndFreeTiles(t *testing.T) {
	for order := 0; order <= 10; order++ {
		for need := uint64(1); need <= 1<<order; need++ {
			covered := make([]int, 1<<order)
			for i := uint64(0); i < need; i++ {
				covered[i]++
			}
			for _, b := range FitAndFree(order, need) {
				mark(t, covered, b)
			}
			for i, c := range covered {
				if c != 1 {
					t.Fatalf("order %d need %d: page %d covered %d times after Fit&Free", order, need, i, c)
				}
			}
			kept := make([]int, need)
			for _, b := range FreeAndFit(order, need) {
				mark(t, kept, b)
			}
			for i, c := range kept {
				if c != 1 {
					t.Fatalf("order %d need %d: kept page %d freed %d times by Free&Fit", order, need, i, c)
				}
			}
		}
	}
}

func mark(t *testing.T, pages []int, b Block) {
	t.Helper()
	if b.Offset%(1<<b.Order) != 0 {
		t.Fatalf("block %v not naturally aligned", b)
	}
	for i := b.Offset; i < b.Offset+1<<b.Order; i++ {
		if i >= uint64(len(pages)) {
			t.Fatalf("block %v beyond %d pages", b, len(pages))
		}
		pages[i]++
	}
}

func TestVanillaAndPagemanAgreeOnPagesExact(t *testing.T) {
	for _, size := range []uint64{4096, 5*4096 + 1, 8 * 4096, 3 << 20} {
		v, _ := New(testConfig, Vanilla)
		p, _ := New(testConfig, Pageman)
		va, err := v.Alloc(PagesExact, size, NoNode)
		if err != nil {
			t.Fatal(err)
		}
		pa, _ := p.Alloc(PagesExact, size, NoNode)
		if va.Kept != pa.Kept {
			t.Errorf("size %d: vanilla keeps %d, pageman %d", size, va.Kept, pa.Kept)
		}
		vf, _ := v.Free(va.Handle, 0)
		pf, _ := p.Free(pa.Handle, 0)
		if vf.Pages != va.Kept || pf.Pages != pa.Kept {
			t.Errorf("size %d: frees return %d and %d pages, kept %d", size, vf.Pages, pf.Pages, va.Kept)
		}
	}
}

func TestKmallocKeepsWholeBlockWithoutPageman(t *testing.T) {
	m, _ := New(testConfig, Vanilla)
	a, err := m.Alloc(Kmalloc, 5*4096+1, NoNode)
	if err != nil {
		t.Fatal(err)
	}
	if a.Kept != 8 || a.BytesAlloc != 8*4096 || len(a.Freed) != 0 {
		t.Errorf("vanilla kmalloc(20481) = %+v", a)
	}
	p, _ := New(testConfig, Pageman)
	a, _ = p.Alloc(Kmalloc, 5*4096+1, NoNode)
	if a.Kept != 6 || a.BytesAlloc != 6*4096 || !a.Fitted {
		t.Errorf("pageman kmalloc(20481) = %+v", a)
	}
	if c := p.Counters(); c != (Counters{FittedAllocs: 1, Live: 1, PagesKept: 6, PagesSaved: 2}) {
		t.Errorf("counters after one fit = %+v", c)
	}
}

func TestRejects(t *testing.T) {
	m, _ := New(testConfig, Pageman)
	if _, err := m.Alloc(KmallocLarge, 8192, NoNode); !errors.Is(err, ErrNotPageAllocator) {
		t.Errorf("kmalloc_large(8192): err = %v", err)
	}
	if a, err := m.Alloc(Kmalloc, 8192, NoNode); err != nil || !a.Slab || a.BytesAlloc != 8192 || len(a.Events()) != 1 {
		t.Errorf("kmalloc(8192) = %+v, %v: want a slab object of 8192 bytes", a, err)
	}
	if _, err := m.Alloc(PagesExact, 4096<<10+1, NoNode); !errors.Is(err, ErrTooLarge) {
		t.Errorf("above largest order: err = %v", err)
	}
	if _, err := m.Free(3, 0); err == nil {
		t.Error("free of unknown handle succeeded")
	}
}

func BenchmarkFitAndFree(b *testing.B) {
	for i := 0; i < b.N; i++ {
		FitAndFree(10, 513)
	}
}

// BenchmarkModelScenario predicts a scenario of 64 allocations over every
// path and their frees, as the harness does once per mode.
func BenchmarkModelScenario(b *testing.B) {
	for i := 0; i < b.N; i++ {
		m, _ := New(testConfig, Pageman)
		for j := 0; j < 64; j++ {
			if _, err := m.Alloc(Paths[j%len(Paths)], uint64(3+j%50)*4096+1, NoNode); err != nil {
				b.Fatal(err)
			}
		}
		for h := 63; h >= 0; h-- {
			if _, err := m.Free(h, 0); err != nil {
				b.Fatal(err)
			}
		}
	}
}
