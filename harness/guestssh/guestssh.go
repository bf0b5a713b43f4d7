// Package guestssh connects to the guest agent over SSH: key authentication
// only, the guest's host key pinned (a different key is an error, never a
// prompt), and a deadline on every call, since golang.org/x/crypto/ssh takes
// no context.
package guestssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/crypto/ssh"
)

// Client is one SSH connection to the guest.
type Client struct {
	conn *ssh.Client
}

// Dial makes one connection attempt, bounded by ctx.
func Dial(ctx context.Context, addr string, signer ssh.Signer, hostKey ssh.PublicKey) (*Client, error) {
	var d net.Dialer
	tcp, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = tcp.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { tcp.Close() })
	defer stop()
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: pinned(hostKey),
	}
	c, chans, reqs, err := ssh.NewClientConn(tcp, addr, cfg)
	if err != nil {
		tcp.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh handshake with %s: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	_ = tcp.SetDeadline(time.Time{})
	return &Client{conn: ssh.NewClient(c, chans, reqs)}, nil
}

// ErrHostKeyMismatch is returned when the guest's host key is not the one
// generated with its image.
var ErrHostKeyMismatch = errors.New("guest host key does not match the pinned key")

func pinned(want ssh.PublicKey) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, got ssh.PublicKey) error {
		if !bytes.Equal(got.Marshal(), want.Marshal()) {
			return fmt.Errorf("%w: got %s", ErrHostKeyMismatch, ssh.FingerprintSHA256(got))
		}
		return nil
	}
}

// IsHostKeyMismatch reports whether err says the guest presented a host
// key other than the pinned one; retrying will not help.
func IsHostKeyMismatch(err error) bool {
	return errors.Is(err, ErrHostKeyMismatch)
}

// WaitReady dials until a handshake succeeds, ctx ends, or alive reports
// that the guest is gone. Each attempt has its own short deadline: user-mode
// networking accepts TCP before the guest listens, and such attempts hang.
func WaitReady(ctx context.Context, addr string, signer ssh.Signer, hostKey ssh.PublicKey,
	attempt time.Duration, alive func() error) (*Client, error) {
	var last error
	for {
		if err := alive(); err != nil {
			return nil, err
		}
		actx, cancel := context.WithTimeout(ctx, attempt)
		c, err := Dial(actx, addr, signer, hostKey)
		cancel()
		if err == nil {
			return c, nil
		}
		if IsHostKeyMismatch(err) {
			return nil, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no ssh handshake with %s (last attempt: %v): %w", addr, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Command string
	Status  int
	Stderr  string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("guest command %q exited %d: %s", e.Command, e.Status, bytes.TrimSpace([]byte(e.Stderr)))
}

// ErrConnectionLost is returned when the connection drops during a command.
var ErrConnectionLost = errors.New("ssh connection to the guest lost")

// Run runs one command in a new session and returns its stdout. A non-zero
// exit is an *ExitError; ctx ending closes the session.
func (c *Client) Run(ctx context.Context, command string) ([]byte, error) {
	sess, err := c.conn.NewSession()
	if err != nil {
		return nil, fmt.Errorf("%w: new session: %v", ErrConnectionLost, err)
	}
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	go func() { done <- sess.Run(command) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Close()
		return nil, fmt.Errorf("guest command %q: %w", command, ctx.Err())
	}
	var exitErr *ssh.ExitError
	switch {
	case err == nil:
		return stdout.Bytes(), nil
	case errors.As(err, &exitErr):
		return stdout.Bytes(), &ExitError{Command: command, Status: exitErr.ExitStatus(), Stderr: stderr.String()}
	default:
		return stdout.Bytes(), fmt.Errorf("%w: %q: %v", ErrConnectionLost, command, err)
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
