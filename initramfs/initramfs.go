// Package initramfs builds the guest's initramfs: a u-root base image (init,
// a shell and core commands, built once and cached by what went into it)
// followed by a small newc archive with what changes from run to run (the
// agent, the modules under test, the SSH keys). The kernel unpacks
// concatenated archives in order, so assembling an image takes milliseconds.
package initramfs

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"
)

// AgentPath is where the guest agent lives in the image; u-root's init runs
// it as uinit.
const AgentPath = "/bin/pageman-agent"

// BaseCommands are the u-root commands of the base image: init, and what a
// person debugging the guest by hand over SSH wants. Kept in the module by
// tools.go so the builder can resolve them.
var BaseCommands = []string{
	"github.com/u-root/u-root/cmds/core/init",
	"github.com/u-root/u-root/cmds/core/gosh",
	"github.com/u-root/u-root/cmds/core/cat",
	"github.com/u-root/u-root/cmds/core/dmesg",
	"github.com/u-root/u-root/cmds/core/echo",
	"github.com/u-root/u-root/cmds/core/free",
	"github.com/u-root/u-root/cmds/core/grep",
	"github.com/u-root/u-root/cmds/core/insmod",
	"github.com/u-root/u-root/cmds/core/ls",
	"github.com/u-root/u-root/cmds/core/lsmod",
	"github.com/u-root/u-root/cmds/core/mount",
	"github.com/u-root/u-root/cmds/core/ps",
	"github.com/u-root/u-root/cmds/core/rmmod",
}

// Base returns the path of the u-root base image, building it into
// cacheDir unless an image built from the same inputs is there. moduleDir
// is this Go module's root: the builder resolves the commands in it.
func Base(ctx context.Context, moduleDir, cacheDir string, log *slog.Logger) (string, error) {
	key, err := baseKey(ctx, moduleDir)
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, "initramfs", "base-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		log.Info("u-root base image cached", "path", out)
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(out), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmpDir)
	log.Info("building u-root base image (about a minute, once)", "path", out)

	env := golang.Default(golang.DisableCGO(), golang.WithGOOS("linux"),
		golang.WithGOARCH("amd64"), golang.WithWorkingDir(moduleDir))
	partial := out + ".partial"
	done := make(chan error, 1)
	go func() {
		done <- uimage.Create(llog.New(slog.LevelWarn, func(format string, v ...any) { log.Warn(fmt.Sprintf(format, v...)) }),
			uimage.WithReplaceEnv(env),
			uimage.WithTempDir(tmpDir),
			uimage.WithBaseArchive(uimage.DefaultRamfs()),
			uimage.WithBusyboxCommands(BaseCommands...),
			uimage.WithInit("init"),
			uimage.WithShell("gosh"),
			uimage.WithUinit(AgentPath),
			uimage.WithCPIOOutput(partial),
		)
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		// The builder takes no context; its go commands end with the process.
		return "", fmt.Errorf("building u-root base image: %w", ctx.Err())
	}
	if err != nil {
		os.Remove(partial)
		return "", fmt.Errorf("building u-root base image: %w", err)
	}
	return out, os.Rename(partial, out)
}

// baseKey names a base image by everything that goes into it: the version
// of every module the commands are built from, the command list and the Go
// toolchain. (Not all of go.sum: an unrelated dependency must not cost a
// rebuild.)
func baseKey(ctx context.Context, moduleDir string) (string, error) {
	args := append([]string{"list", "-deps", "-f", "{{with .Module}}{{.Path}}@{{.Version}}{{end}}"}, BaseCommands...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	deps, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("u-root base image key: go list: %w", err)
	}
	h := sha256.New()
	h.Write(deps)
	fmt.Fprintln(h, strings.Join(BaseCommands, " "), runtime.Version(), AgentPath)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// File is one file of the per-run archive.
type File struct {
	Name string // path in the guest, without the leading slash
	Data []byte
	Mode uint64 // permission bits
}

// Assemble writes base followed by a newc archive of files to out.
func Assemble(base string, files []File, out string) error {
	dst, err := os.Create(out)
	if err != nil {
		return err
	}
	defer dst.Close()
	src, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	defer src.Close()
	w := bufio.NewWriter(dst)
	if _, err := io.Copy(w, src); err != nil {
		return fmt.Errorf("copying base image: %w", err)
	}
	rw := cpio.NewDedupWriter(cpio.Newc.Writer(w))
	recs := make([]cpio.Record, 0, len(files))
	for _, f := range files {
		recs = append(recs, cpio.StaticFile(f.Name, string(f.Data), f.Mode))
	}
	if err := cpio.WriteRecordsAndDirs(rw, recs); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return dst.Close()
}

// BuildAgent compiles the guest agent (guest/agent) as a static binary.
func BuildAgent(ctx context.Context, moduleDir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./guest/agent")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building guest agent: %w\n%s", err, b)
	}
	return nil
}
