package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
)

// BuildModule builds the out-of-tree module whose sources are in srcDir
// (a Kbuild file and .c files) against the build tree, in a cache
// directory keyed by the tree's identity and the sources, and returns the
// paths of the .ko files it made. The source directory is never written.
func BuildModule(ctx context.Context, b *Build, srcDir, cacheDir string, jobs int) ([]string, error) {
	srcs, err := moduleSources(srcDir)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintln(h, "pageman-harness module v1", b.Key, b.Tree, b.Version)
	if st, err := os.Stat(filepath.Join(b.Tree, "Module.symvers")); err == nil {
		fmt.Fprintln(h, st.Size(), st.ModTime().UnixNano())
	}
	for _, f := range srcs {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		fmt.Fprintln(h, filepath.Base(f), len(data))
		h.Write(data)
	}
	dir := filepath.Join(cacheDir, "modules", filepath.Base(srcDir)+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	if kos, _ := filepath.Glob(filepath.Join(dir, "*.ko")); len(kos) > 0 {
		if _, err := os.Stat(filepath.Join(dir, "built")); err == nil {
			sort.Strings(kos)
			return kos, nil
		}
	}
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for _, f := range srcs {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			return nil, err
		}
	}
	if jobs == 0 {
		jobs = 2
	}
	cmd := exec.CommandContext(ctx, "make", "-j"+strconv.Itoa(jobs), "-C", b.Tree, "M="+dir, "modules")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building module %s against %s: %w\n%s", srcDir, b.Tree, err, out)
	}
	kos, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	if len(kos) == 0 {
		return nil, fmt.Errorf("building module %s: make produced no .ko in %s", srcDir, dir)
	}
	sort.Strings(kos)
	return kos, os.WriteFile(filepath.Join(dir, "built"), nil, 0o644)
}

// moduleSources lists the files of an out-of-tree module directory.
func moduleSources(dir string) ([]string, error) {
	var out []string
	for _, pat := range []string{"Kbuild", "Makefile", "*.c", "*.h"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		out = append(out, m...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("module directory %s has no Kbuild or sources", dir)
	}
	sort.Strings(out)
	return out, nil
}
