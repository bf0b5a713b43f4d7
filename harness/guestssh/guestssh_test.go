package guestssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve runs a real x/crypto/ssh server on 127.0.0.1 that accepts only
// client and answers every exec with "ok" and exit status 3.
func serve(t *testing.T, host, client ssh.Signer) string {
	t.Helper()
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) != string(client.PublicKey().Marshal()) {
			return nil, errors.New("not authorized")
		}
		return nil, nil
	}}
	cfg.AddHostKey(host)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for nc := range chans {
					ch, creqs, _ := nc.Accept()
					go func() {
						for r := range creqs {
							_ = r.Reply(r.Type == "exec", nil)
							if r.Type == "exec" {
								_, _ = ch.Write([]byte("ok"))
								st := make([]byte, 4)
								binary.BigEndian.PutUint32(st, 3)
								_, _ = ch.SendRequest("exit-status", false, st)
								ch.Close()
							}
						}
					}()
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPinnedHostKey(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	addr := serve(t, host, client)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Another host key: an error at once, never a retry or a prompt.
	_, err := WaitReady(ctx, addr, client, newSigner(t).PublicKey(), time.Second, func() error { return nil })
	if !IsHostKeyMismatch(err) {
		t.Fatalf("connecting with another pinned key: %v, want a host key mismatch", err)
	}
	c, err := WaitReady(ctx, addr, client, host.PublicKey(), time.Second, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out, err := c.Run(ctx, "anything")
	var exit *ExitError
	if string(out) != "ok" || !errors.As(err, &exit) || exit.Status != 3 {
		t.Errorf("Run = %q, %v; want \"ok\" and exit status 3", out, err)
	}
	// A client key the server does not know is refused.
	if _, err := Dial(ctx, addr, newSigner(t), host.PublicKey()); err == nil {
		t.Error("an unknown client key was accepted")
	}
}

// WaitReady gives up as soon as the guest is reported gone.
func TestWaitReadyStopsWhenGuestDies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // nothing listens: every attempt fails
	gone := errors.New("QEMU exited")
	calls := 0
	_, err = WaitReady(context.Background(), ln.Addr().String(), newSigner(t), newSigner(t).PublicKey(), time.Second,
		func() error {
			if calls++; calls > 3 {
				return gone
			}
			return nil
		})
	if !errors.Is(err, gone) {
		t.Errorf("err = %v, want %v", err, gone)
	}
}
