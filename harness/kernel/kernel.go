// Package kernel turns a kernel source (Debian's linux-source package or a
// tree of the user's) plus a patch series and config fragments into a
// bootable bzImage and a build tree for out-of-tree modules. Every build
// lives in a cache directory keyed by what went into it (source identity,
// patch and fragment contents, compiler), so a second run with the same
// inputs builds nothing; ccache makes a build with changed inputs cheap.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Spec says what to build.
type Spec struct {
	// Source is a kernel tree to copy and patch; empty means Debian's
	// linux-source package (DebianPackage), downloaded with apt-get.
	Source        string
	DebianPackage string // default "linux-source-6.1"
	// PatchRoot holds one directory of patches per kernel series, named
	// linux-MAJOR.MINOR (e.g. guest/patches/linux-6.1); the series is
	// chosen by the source's version.
	PatchRoot string
	// Subject names the patch series within a version directory's parent:
	// patches are read from PatchRoot/<subject>/linux-MAJOR.MINOR when
	// Subject is set, else from PatchRoot/linux-MAJOR.MINOR.
	Subject   string
	Fragments []string // config fragments merged on top of tinyconfig
	// Extra patches are applied after the series (e.g. a mutant's).
	Extra    []string
	CacheDir string // e.g. ~/.cache/pageman-harness
	Jobs     int    // make -j; default number of CPUs + 1
}

// Build is a finished kernel build.
type Build struct {
	Tree    string // patched source and build tree (in-tree build)
	Image   string // arch/x86/boot/bzImage
	Version string // `make kernelversion`
	Key     string // cache key of this build
	Cached  bool   // true when nothing had to be built
}

// Build returns the cached build for spec, building it first if needed.
func BuildKernel(ctx context.Context, spec Spec, log *slog.Logger) (*Build, error) {
	if spec.DebianPackage == "" {
		spec.DebianPackage = "linux-source-6.1"
	}
	if spec.Jobs == 0 {
		spec.Jobs = runtime.NumCPU() + 1
	}
	// Commands run inside the tree: every path handed to them is absolute.
	var err error
	if spec.PatchRoot, err = filepath.Abs(spec.PatchRoot); err != nil {
		return nil, err
	}
	for i, f := range spec.Fragments {
		if spec.Fragments[i], err = filepath.Abs(f); err != nil {
			return nil, err
		}
	}
	src, identity, err := source(ctx, spec, log)
	if err != nil {
		return nil, err
	}
	version, err := kernelVersion(ctx, src)
	if err != nil {
		return nil, err
	}
	patches, err := Series(spec.PatchRoot, spec.Subject, version)
	if err != nil {
		return nil, err
	}
	for _, p := range spec.Extra {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		patches = append(patches, abs)
	}
	key, err := cacheKey(ctx, identity, patches, spec.Fragments)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(spec.CacheDir, "kernel", key)
	b := &Build{Tree: filepath.Join(dir, "linux"), Version: version, Key: key}
	b.Image = filepath.Join(b.Tree, "arch", "x86", "boot", "bzImage")
	stamp := filepath.Join(dir, "built")
	if _, err := os.Stat(stamp); err == nil {
		b.Cached = true
		log.Info("kernel build cached", "version", version, "tree", b.Tree)
		return b, nil
	}
	log.Info("building kernel (first time for these inputs)", "version", version, "patches", len(patches), "tree", b.Tree)
	start := time.Now()
	if err := prepareTree(ctx, src, b.Tree, patches); err != nil {
		return nil, err
	}
	if err := configure(ctx, b.Tree, spec.Fragments); err != nil {
		return nil, err
	}
	if err := compile(ctx, b.Tree, filepath.Join(spec.CacheDir, "ccache"), spec.Jobs, filepath.Join(dir, "build.log")); err != nil {
		return nil, err
	}
	log.Info("kernel built", "seconds", int(time.Since(start).Seconds()), "image", b.Image)
	return b, os.WriteFile(stamp, []byte(time.Now().Format(time.RFC3339)+"\n"), 0o644)
}

// source returns a pristine kernel tree and a string that identifies its
// contents for the cache key.
func source(ctx context.Context, spec Spec, log *slog.Logger) (dir, identity string, err error) {
	if spec.Source != "" {
		return userSource(spec.Source)
	}
	return debianSource(ctx, spec.DebianPackage, filepath.Join(spec.CacheDir, "sources"), log)
}

// userSource identifies a user's tree by its path and the newest
// modification time of any file in it: editing a file rebuilds.
func userSource(dir string) (string, string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", err
	}
	if _, err := os.Stat(filepath.Join(abs, "Makefile")); err != nil {
		return "", "", fmt.Errorf("kernel source %s: not a kernel tree (no Makefile): %w", abs, err)
	}
	if _, err := os.Stat(filepath.Join(abs, "mm", "page_alloc.c")); err != nil {
		return "", "", fmt.Errorf("kernel source %s: not a kernel tree (no mm/page_alloc.c): %w", abs, err)
	}
	var newest time.Time
	err = filepath.WalkDir(abs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if info, err := d.Info(); err == nil && info.ModTime().After(newest) {
			newest = info.ModTime()
		}
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("kernel source %s: %w", abs, err)
	}
	return abs, fmt.Sprintf("tree %s newest %d", abs, newest.UnixNano()), nil
}

// debianSource downloads the package with apt-get (once) and extracts its
// tarball (once).
func debianSource(ctx context.Context, pkg, dir string, log *slog.Logger) (string, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(debs) == 0 {
		log.Info("downloading Debian kernel source", "package", pkg)
		cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, out)
		}
		debs, _ = filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		if len(debs) == 0 {
			return "", "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, dir)
		}
	}
	sort.Strings(debs)
	deb := debs[len(debs)-1]
	tree := strings.TrimSuffix(deb, ".deb")
	if _, err := os.Stat(filepath.Join(tree, "Makefile")); err == nil {
		return tree, "debian " + filepath.Base(deb), nil
	}
	log.Info("extracting kernel source", "deb", deb)
	tmp := tree + ".partial"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", "", err
	}
	script := `set -e; dpkg-deb --fsys-tarfile "$1" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$2" --strip-components=1`
	if out, err := exec.CommandContext(ctx, "sh", "-c", script, "sh", deb, tmp).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("extracting %s: %w\n%s", deb, err, out)
	}
	if err := os.Rename(tmp, tree); err != nil {
		return "", "", err
	}
	return tree, "debian " + filepath.Base(deb), nil
}

func kernelVersion(ctx context.Context, tree string) (string, error) {
	out, err := exec.CommandContext(ctx, "make", "-s", "-C", tree, "kernelversion").Output()
	if err != nil {
		return "", fmt.Errorf("make kernelversion in %s: %w", tree, err)
	}
	return strings.TrimSpace(string(out)), nil
}

var seriesVersion = regexp.MustCompile(`^(\d+)\.(\d+)`)

// Series returns the patch files for a kernel version, in order.
func Series(root, subject, version string) ([]string, error) {
	m := seriesVersion.FindStringSubmatch(version)
	if m == nil {
		return nil, fmt.Errorf("kernel version %q: no MAJOR.MINOR", version)
	}
	dir := filepath.Join(root, subject, "linux-"+m[1]+"."+m[2])
	patches, err := filepath.Glob(filepath.Join(dir, "*.patch"))
	if err != nil {
		return nil, err
	}
	if len(patches) == 0 {
		have, _ := filepath.Glob(filepath.Join(root, subject, "linux-*"))
		for i := range have {
			have[i] = filepath.Base(have[i])
		}
		return nil, fmt.Errorf("no patch series for kernel %s in %s (series available: %s)", version, dir, strings.Join(have, ", "))
	}
	sort.Strings(patches)
	return patches, nil
}

// cacheKey hashes everything that decides the build's output.
func cacheKey(ctx context.Context, identity string, patches, fragments []string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, "pageman-harness kernel v1", identity)
	for _, f := range append(append([]string{}, patches...), fragments...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(b))
		h.Write(b)
	}
	if cc, err := exec.CommandContext(ctx, "gcc", "--version").Output(); err == nil {
		h.Write(cc)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// prepareTree copies the pristine source and applies the patches, each with
// a clear error naming the patch that failed.
func prepareTree(ctx context.Context, src, tree string, patches []string) error {
	_ = os.RemoveAll(tree)
	if err := os.MkdirAll(filepath.Dir(tree), 0o755); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "cp", "-a", src, tree).CombinedOutput(); err != nil {
		return fmt.Errorf("copying kernel source: %w\n%s", err, out)
	}
	for _, p := range patches {
		cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "-i", p)
		cmd.Dir = tree
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("patch %s does not apply to %s: %w\n%s", filepath.Base(p), src, err, out)
		}
	}
	return nil
}

// configure makes tinyconfig, merges the fragments and checks that every
// option of the fragments survived olddefconfig.
func configure(ctx context.Context, tree string, fragments []string) error {
	steps := [][]string{
		{"make", "-s", "tinyconfig"},
		append([]string{"scripts/kconfig/merge_config.sh", "-m", ".config"}, fragments...),
		{"make", "-s", "olddefconfig"},
	}
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, s[0], s[1:]...)
		cmd.Dir = tree
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kernel config: %s: %w\n%s", strings.Join(s, " "), err, out)
		}
	}
	got, err := readConfig(filepath.Join(tree, ".config"))
	if err != nil {
		return err
	}
	// A later fragment overrides an earlier one, as merge_config.sh does.
	want, from := map[string]string{}, map[string]string{}
	for _, f := range fragments {
		opts, err := readConfig(f)
		if err != nil {
			return err
		}
		for k, v := range opts {
			want[k], from[k] = v, filepath.Base(f)
		}
	}
	var lost []string
	for k, v := range want {
		if got[k] != v && !(v == "n" && got[k] == "") {
			lost = append(lost, fmt.Sprintf("%s=%s (got %q) from %s", k, v, got[k], from[k]))
		}
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		return fmt.Errorf("kernel config: options of the fragments not in the final .config (a dependency is missing):\n  %s", strings.Join(lost, "\n  "))
	}
	return nil
}

// readConfig reads CONFIG_X=v lines and "# CONFIG_X is not set" as "n".
func readConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if name, ok := strings.CutPrefix(line, "# "); ok && strings.HasSuffix(name, " is not set") {
			out[strings.TrimSuffix(name, " is not set")] = "n"
		} else if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			out[k] = v
		}
	}
	return out, s.Err()
}

// compile runs make with ccache. Fixed build user, host and timestamp keep
// ccache hits across trees.
func compile(ctx context.Context, tree, ccacheDir string, jobs int, logPath string) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.CommandContext(ctx, "make", "-j"+strconv.Itoa(jobs), "CC=ccache gcc", "bzImage", "modules")
	cmd.Dir = tree
	cmd.Env = append(os.Environ(), "CCACHE_DIR="+ccacheDir, "CCACHE_BASEDIR="+tree, "CCACHE_NOHASHDIR=1",
		"CCACHE_MAXSIZE=5G", "KBUILD_BUILD_TIMESTAMP=1970-01-01", "KBUILD_BUILD_USER=pageman", "KBUILD_BUILD_HOST=harness")
	var tailBuf tailWriter
	cmd.Stdout = io.MultiWriter(logFile, &tailBuf)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kernel build failed (%w); full log %s; last lines:\n%s", err, logPath, tailBuf.Tail(30))
	}
	return nil
}

// tailWriter keeps the last 64 KiB written to it.
type tailWriter struct{ buf []byte }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 64<<10 {
		t.buf = t.buf[len(t.buf)-64<<10:]
	}
	return len(p), nil
}

func (t *tailWriter) Tail(n int) string {
	lines := bytes.Split(bytes.TrimRight(t.buf, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// ErrNoBuildTree is returned when a prebuilt image has no build tree.
var ErrNoBuildTree = errors.New("no kernel build tree for the image")

// Prebuilt describes a bzImage built elsewhere. Its build tree (to build
// modules against) is buildTree if given, else the tree the image sits in
// (TREE/arch/x86/boot/bzImage).
func Prebuilt(ctx context.Context, image, buildTree string) (*Build, error) {
	if _, err := os.Stat(image); err != nil {
		return nil, fmt.Errorf("kernel image: %w", err)
	}
	if err := checkBzImage(image); err != nil {
		return nil, err
	}
	if buildTree == "" {
		buildTree = filepath.Clean(filepath.Join(filepath.Dir(image), "..", "..", ".."))
	}
	if _, err := os.Stat(filepath.Join(buildTree, "Module.symvers")); err != nil {
		return nil, fmt.Errorf("%w %s: %s has no Module.symvers (name the build tree with --kernel-build)", ErrNoBuildTree, image, buildTree)
	}
	version, err := kernelVersion(ctx, buildTree)
	if err != nil {
		return nil, err
	}
	return &Build{Tree: buildTree, Image: image, Version: version, Cached: true}, nil
}

// checkBzImage rejects a file that is not an x86 boot image ("HdrS" magic
// at offset 0x202), so a wrong path fails here and not as a silent guest.
func checkBzImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0x202); err != nil || string(magic) != "HdrS" {
		return fmt.Errorf("kernel image %s is not an x86 bzImage (no HdrS boot header)", path)
	}
	return nil
}
