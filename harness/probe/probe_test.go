package probe

import (
	"os"
	"strings"
	"testing"
)

// testdata holds replies of the probe module in a guest.
func TestParseCapturedReplies(t *testing.T) {
	for _, name := range []string{"alloc.reply", "free.reply"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ParseReply(string(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Err() != nil || r.Orders == 0 || len(r.FreeBefore) != r.Orders || len(r.FreeAfter) != r.Orders || r.PFN == 0 {
			t.Errorf("%s: %+v", name, r)
		}
		if strings.HasPrefix(name, "alloc") && (r.Handle < 0 || r.Order == 0) {
			t.Errorf("%s: no handle or order: %+v", name, r)
		}
	}
}

func TestParseReplyErrors(t *testing.T) {
	for _, text := range []string{
		"orders 11\n",                            // no status
		"orders 2\nfree_after 1 2 3\nstatus 0\n", // wrong count
		"orders 11\nstatus 0\nsurprise 1\n",      // unknown key
		"orders 11\nstatus zero\n",               // bad number
	} {
		if _, err := ParseReply(text); err == nil {
			t.Errorf("ParseReply(%q) accepted", text)
		}
	}
	r, err := ParseReply("orders 11\nstatus -12\n")
	if err != nil || r.Err() == nil || !strings.Contains(r.Err().Error(), "cannot allocate memory") {
		t.Errorf("ENOMEM reply: %+v, %v", r, err)
	}
}

func TestFreePages(t *testing.T) {
	if got := FreePages([]uint64{1, 1, 1}); got != 1+2+4 {
		t.Errorf("FreePages = %d", got)
	}
}

func TestRequests(t *testing.T) {
	if got := Alloc("kmalloc_node", 20481, 1); got != "alloc kmalloc_node 20481 1" {
		t.Error(got)
	}
	if got := Alloc("kmalloc", 20481, -1); got != "alloc kmalloc 20481" {
		t.Error(got)
	}
	if got := Free(3, 0); got != "free 3" {
		t.Error(got)
	}
}
