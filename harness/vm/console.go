package vm

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"sync"
)

// Console collects the guest's serial output: it writes every byte to a log
// file and keeps all of it in memory so that waits and crash scans can read
// it while the guest runs.
type Console struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
	closed  bool
	file    *os.File
}

func newConsole(path string) (*Console, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &Console{changed: make(chan struct{}), file: f}, nil
}

// Write appends guest output.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	_, _ = c.file.Write(p)
	close(c.changed)
	c.changed = make(chan struct{})
	return len(p), nil
}

// copyFrom pumps r into the console until EOF, then marks it closed.
func (c *Console) copyFrom(r io.Reader) {
	_, _ = io.Copy(c, r)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	_ = c.file.Close()
	close(c.changed)
	c.changed = make(chan struct{})
}

// String returns everything the guest printed so far.
func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Tail returns the last n lines the guest printed.
func (c *Console) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(c.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Len returns the number of bytes printed so far, a position for WaitFor.
func (c *Console) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Len()
}

// WaitFor waits until one of the markers appears after byte offset from, and
// returns it. It gives up when ctx ends or the console closes (QEMU exited).
func (c *Console) WaitFor(ctx context.Context, from int, markers ...string) (string, error) {
	for {
		c.mu.Lock()
		text := c.buf.String()
		changed, closed := c.changed, c.closed
		c.mu.Unlock()
		if from > len(text) {
			from = len(text)
		}
		for _, m := range markers {
			if strings.Contains(text[from:], m) {
				return m, nil
			}
		}
		if closed {
			return "", ErrExited
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-changed:
		}
	}
}
