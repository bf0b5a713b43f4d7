// Package hostdeps checks that the Debian packages the harness needs are
// installed, and installs the missing ones with apt-get when run as root.
package hostdeps

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
)

// Packages are what building a kernel, building modules and booting QEMU
// need on a Debian host beyond Go, gcc and make.
var Packages = []string{
	"qemu-system-x86", "flex", "bison", "bc", "libelf-dev", "libssl-dev",
	"ccache", "cpio", "xz-utils", "patch", "kmod",
}

// Missing returns the packages of pkgs that dpkg does not list as installed.
func Missing(ctx context.Context, pkgs []string) ([]string, error) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		return nil, fmt.Errorf("dpkg-query not found: the harness installs its host packages on Debian or Ubuntu only; install %s by hand", strings.Join(pkgs, " "))
	}
	var missing []string
	for _, p := range pkgs {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), " installed") {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// Ensure installs the missing packages of pkgs, or says how to when not root.
func Ensure(ctx context.Context, log *slog.Logger, pkgs []string) error {
	missing, err := Missing(ctx, pkgs)
	if err != nil || len(missing) == 0 {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing host packages %s: run `sudo apt-get install -y %s`", strings.Join(missing, " "), strings.Join(missing, " "))
	}
	log.Info("installing host packages", "packages", missing)
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, tail(string(out), 20))
		}
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
