// Command pageman-agent is the guest side of pageman-harness: u-root's init
// starts it as uinit. It brings up the network, then serves SSH with
// golang.org/x/crypto/ssh (key authentication only, host key generated at
// image build) and runs the harness's requests. It never returns: u-root's
// init would stop the guest if it did.
//
// Requests are SSH "exec" commands. Built-ins run in the agent itself, for
// speed and so the guest needs no shell:
//
//	step JSON         {"mark": TEXT, "request": REQUEST}: write TEXT to the
//	                  kernel log, clear the trace buffer, send REQUEST to
//	                  the probe module, and print JSON with the reply, the
//	                  trace, the kernel log written meanwhile, and
//	                  /proc/buddyinfo, /proc/meminfo and /proc/pageman
//	read FILE...      print JSON {file: contents}
//	write FILE TEXT   write TEXT to FILE
//	insmod FILE [ARGS]  load a module
//	rmmod NAME        unload a module
//	mark TEXT         write TEXT to the kernel log (/dev/kmsg)
//	kill-ssh          stop serving SSH, as if the server died (for the
//	                  harness's own tests)
//
// Anything else is an error: the harness is the agent's only client.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

const (
	hostKeyFile       = "/etc/pageman/ssh_host_ed25519_key"
	authorizedKeyFile = "/etc/pageman/authorized_key"
	probeFile         = "/proc/pageman_probe"
	tracePipe         = "/sys/kernel/tracing/trace_pipe"
	tracingOn         = "/sys/kernel/tracing/tracing_on"
	// ReadyMarker is printed on the console once SSH accepts connections;
	// the host waits for it before its first connection attempt.
	readyMarker = "pageman-agent: ssh ready"
)

func main() {
	log.SetPrefix("pageman-agent: ")
	log.SetFlags(0)
	if err := run(); err != nil {
		log.Printf("fatal: %v", err)
	}
	// Returning would end u-root's init and panic the kernel: the host
	// sees the error above on the console and times out with it. (A bare
	// select{} with no other goroutine is a deadlock the runtime kills.)
	for {
		time.Sleep(time.Hour)
	}
}

func run() error {
	mountFilesystems()
	if err := openKernelFiles(); err != nil {
		return fmt.Errorf("kernel log and trace: %w", err)
	}
	if err := configureNetwork("eth0", [4]byte{10, 0, 2, 15}, [4]byte{255, 255, 255, 0}); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	cfg, err := serverConfig()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", ":22")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	server.listener = ln
	fmt.Println(readyMarker)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if server.killed() {
				return nil // as asked: serve nothing more, stay up
			}
			return fmt.Errorf("accept: %w", err)
		}
		server.track(conn)
		go serveConn(conn, cfg)
	}
}

// server is the agent's SSH service, which "fault kill-ssh" ends.
var server sshService

type sshService struct {
	mu       sync.Mutex
	listener net.Listener
	conns    []net.Conn
	dead     bool
}

func (s *sshService) track(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = append(s.conns, c)
}

func (s *sshService) killed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dead
}

// kill closes the listener and every connection, as if sshd had died.
func (s *sshService) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dead = true
	s.listener.Close()
	for _, c := range s.conns {
		c.Close()
	}
	log.Printf("ssh server stopped on request")
}

// mountFilesystems mounts what the requests read; u-root's init mounts
// /proc, /sys and /dev, and an already mounted one is fine.
func mountFilesystems() {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"debugfs", "/sys/kernel/debug", "debugfs"},
		{"tracefs", "/sys/kernel/tracing", "tracefs"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			log.Printf("mount %s: %v", m.dst, err)
		}
	}
}

// configureNetwork gives an interface a static address (QEMU user-mode
// networking always uses 10.0.2.15/24) and brings it and lo up.
func configureNetwork(name string, addr, mask [4]byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	set := func(ifname string, req uint, ip [4]byte) error {
		ifr, err := unix.NewIfreq(ifname)
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(ip[:]); err != nil {
			return err
		}
		return unix.IoctlIfreq(fd, req, ifr)
	}
	up := func(ifname string) error {
		ifr, err := unix.NewIfreq(ifname)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return fmt.Errorf("%s flags: %w", ifname, err)
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("%s up: %w", ifname, err)
		}
		return nil
	}
	if err := up("lo"); err != nil {
		return err
	}
	if err := set(name, unix.SIOCSIFADDR, addr); err != nil {
		return fmt.Errorf("%s address: %w", name, err)
	}
	if err := set(name, unix.SIOCSIFNETMASK, mask); err != nil {
		return fmt.Errorf("%s netmask: %w", name, err)
	}
	return up(name)
}

func serverConfig() (*ssh.ServerConfig, error) {
	keyPEM, err := os.ReadFile(hostKeyFile)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	hostKey, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("host key %s: %w", hostKeyFile, err)
	}
	authText, err := os.ReadFile(authorizedKeyFile)
	if err != nil {
		return nil, fmt.Errorf("authorized key: %w", err)
	}
	authorized, _, _, _, err := ssh.ParseAuthorizedKey(authText)
	if err != nil {
		return nil, fmt.Errorf("authorized key %s: %w", authorizedKeyFile, err)
	}
	want := authorized.Marshal()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), want) {
				return nil, nil
			}
			return nil, errors.New("key not authorized")
		},
	}
	cfg.AddHostKey(hostKey)
	return cfg, nil
}

func serveConn(conn net.Conn, cfg *ssh.ServerConfig) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	sconn, chans, reqs, err := ssh.NewServerConn(conn, cfg)
	if err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	defer sconn.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go serveSession(ch, creqs)
	}
}

// serveSession answers the "exec" request before running the command (the
// client waits for that reply), keeps stderr apart and sends exit-status.
func serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			_ = req.Reply(false, nil)
			continue
		}
		var payload struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
			_ = req.Reply(false, nil)
			continue
		}
		_ = req.Reply(true, nil)
		code := execute(payload.Command, ch, ch.Stderr())
		status := make([]byte, 4)
		binary.BigEndian.PutUint32(status, uint32(code))
		_, _ = ch.SendRequest("exit-status", false, status)
		return
	}
}

func execute(command string, stdout, stderr io.Writer) int {
	verb, rest, _ := strings.Cut(strings.TrimSpace(command), " ")
	var err error
	switch verb {
	case "step":
		err = step(rest, stdout)
	case "read":
		err = readFiles(strings.Fields(rest), stdout)
	case "write":
		file, text, _ := strings.Cut(rest, " ")
		err = os.WriteFile(file, []byte(text), 0)
	case "insmod":
		file, params, _ := strings.Cut(rest, " ")
		err = insmod(file, params)
	case "rmmod":
		err = unix.DeleteModule(rest, unix.O_NONBLOCK)
	case "mark":
		err = logMark(rest)
	case "kill-ssh":
		server.kill() // this command's own connection too: no reply
	default:
		fmt.Fprintf(stderr, "unknown command %q\n", verb)
		return 127
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", verb, err)
		return 1
	}
	return 0
}

func insmod(file, params string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), params, 0)
}

// readFiles prints the files as one JSON object; a file that cannot be
// read is an error, so the host never mistakes "missing" for "empty".
func readFiles(files []string, w io.Writer) error {
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		out[f] = string(b)
	}
	return json.NewEncoder(w).Encode(out)
}

// stepRequest is what "step" reads.
type stepRequest struct {
	Mark    string `json:"mark"`
	Request string `json:"request"`
}

// stepResult is what "step" prints; the host parses each text itself.
type stepResult struct {
	Probe     string `json:"probe"`
	Trace     string `json:"trace"`
	Kmsg      string `json:"kmsg"` // kernel log records written during the step`
	Buddyinfo string `json:"buddyinfo"`
	Meminfo   string `json:"meminfo"`
	// Pageman's counters just before the request and after it; absent
	// when the module is not loaded.
	PagemanBefore string `json:"pageman_before,omitempty"`
	Pageman       string `json:"pageman,omitempty"`
}

// The kernel log and the trace are read and written through descriptors
// opened once, when the agent starts (before any module under test is
// loaded), and kept: opening /dev/kmsg or a trace file makes a kmalloc
// above KMALLOC_MAX_CACHE_SIZE, which the subject would fit while loaded.
// Opening them at every step would test the subject with the agent's own
// allocations and mix them with the probe's.
var (
	stepKmsg, stepTrace *rawReader
	kmsgWriter          *os.File
)

// openKernelFiles opens the kept descriptors.
func openKernelFiles() error {
	var err error
	if stepKmsg, err = openRaw("/dev/kmsg"); err != nil {
		return err
	}
	if stepTrace, err = openRaw(tracePipe); err != nil {
		return err
	}
	kmsgWriter, err = os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	return err
}

// logMark writes one record to the kernel log. The newline ends the
// record: an open record is neither readable nor printed until the next
// one starts.
func logMark(text string) error {
	_, err := kmsgWriter.WriteString(text + "\n")
	return err
}

func step(arg string, w io.Writer) error {
	var req stepRequest
	if err := json.Unmarshal([]byte(arg), &req); err != nil {
		return fmt.Errorf("step request %q: %w", arg, err)
	}
	if _, err := unix.Seek(stepKmsg.fd, 0, io.SeekEnd); err != nil {
		return fmt.Errorf("kernel log: %w", err)
	}
	if req.Mark != "" {
		if err := logMark(req.Mark); err != nil {
			return fmt.Errorf("step marker: %w", err)
		}
	}
	stepTrace.readAll() // drop what was recorded between steps
	// Record only while the request runs.
	if err := os.WriteFile(tracingOn, []byte("1"), 0); err != nil {
		return fmt.Errorf("start tracing: %w", err)
	}
	var res stepResult
	if b, err := os.ReadFile("/proc/pageman"); err == nil {
		res.PagemanBefore = string(b)
	}
	var err error
	if res.Probe, err = probe(req.Request); err != nil {
		return err
	}
	if b, err := os.ReadFile("/proc/pageman"); err == nil {
		res.Pageman = string(b)
	}
	if err := os.WriteFile(tracingOn, []byte("0"), 0); err != nil {
		return fmt.Errorf("stop tracing: %w", err)
	}
	res.Kmsg = kmsgLines(stepKmsg)
	res.Trace = stepTrace.readAll()
	for _, f := range []struct {
		dst  *string
		name string
	}{
		{&res.Buddyinfo, "/proc/buddyinfo"},
		{&res.Meminfo, "/proc/meminfo"},
	} {
		b, err := os.ReadFile(f.name)
		if err != nil {
			return err
		}
		*f.dst = string(b)
	}
	return json.NewEncoder(w).Encode(res)
}

// probe sends one request to the probe module and reads its reply from
// the same open file.
func probe(request string) (string, error) {
	f, err := os.OpenFile(probeFile, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("probe module: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(request); err != nil {
		return "", fmt.Errorf("probe request %q: %w", request, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("probe reply: %w", err)
	}
	return string(b), nil
}

// rawReader reads a kernel file without blocking. It uses raw system
// calls: an *os.File opened non-blocking would park reads in Go's poller
// and wait for more data instead of returning at the end.
type rawReader struct {
	fd   int
	name string
}

func openRaw(name string) (*rawReader, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &rawReader{fd, name}, nil
}

// readAll returns what can be read now.
func (r *rawReader) readAll() string {
	var out strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(r.fd, buf)
		if err != nil || n <= 0 {
			return out.String() // EAGAIN: nothing more for now
		}
		out.Write(buf[:n])
	}
}

// kmsgLines returns the kernel log records readable from k, one per line,
// as dmesg prints them ("[seconds] message").
func kmsgLines(k *rawReader) string {
	var out strings.Builder
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(k.fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records overwritten before we read them
		}
		if err != nil || n <= 0 {
			return out.String() // EAGAIN: no more records
		}
		// "level,seq,usec,flags;message" then dictionary lines (" KEY=v")
		prefix, msg, ok := strings.Cut(string(buf[:n]), ";")
		if !ok {
			continue
		}
		fields := strings.Split(prefix, ",")
		usec := int64(0)
		if len(fields) > 2 {
			usec, _ = strconv.ParseInt(fields[2], 10, 64)
		}
		line, _, _ := strings.Cut(msg, "\n")
		fmt.Fprintf(&out, "[%5d.%06d] %s\n", usec/1e6, usec%1e6, line)
	}
}
