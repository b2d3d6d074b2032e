"""Helm for the chart's checks (deploy/helm/ferry), built from source with Go since no release download is used.

    python -m dev.helm build        build helm into .cache/bin once (a few minutes the first time); print its path
    python -m dev.helm lint         helm lint and helm template the chart with each value set of its ci/ folder
    python -m dev.helm run ARGS...  run the pinned helm with ARGS (e.g. template ferry deploy/helm/ferry -f ...)

Everything the build and Helm write stays in the git-ignored .cache/ of the checkout (GOPATH, GOMODCACHE,
GOCACHE, Helm's cache/config/data homes), so a fresh clone needs only Go and the Go module proxy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "ferry"
HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"
# Helm built by `go install` lacks the Kubernetes version ldflags, so it assumes Kubernetes v1.20 unless told; the
# chart needs 1.25+ (policy/v1, autoscaling/v2), so every render names a current version.
KUBE_VERSION = "1.33.0"
# What a release build stamps in (Helm's Makefile): `helm version` then names the release; -s -w drop the symbol
# and debug tables (83 MB -> about 60 MB).
LDFLAGS = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
# Where Go is usually installed when it is not on PATH (the official tarball's location).
GO_FALLBACK = Path("/usr/local/go/bin/go")


class HelmUnavailable(RuntimeError):
    """Helm could not be built; the message says why (no Go, the module proxy unreachable, the build failed)."""


def cache_dir() -> Path:
    return Path(os.environ.get("FERRY_DEV_CACHE_DIR", ROOT / ".cache"))


def helm_path() -> Path:
    return cache_dir() / "bin" / "helm"


def _version_stamp() -> Path:
    # Written after a successful build with what was built: a changed HELM_VERSION or LDFLAGS rebuilds.
    return cache_dir() / "bin" / "helm.version"


def _go() -> str:
    found = shutil.which("go")
    if found:
        return found
    if GO_FALLBACK.exists():
        return str(GO_FALLBACK)
    raise HelmUnavailable(f"helm is built from source ({HELM_MODULE}@{HELM_VERSION}) and needs Go: no `go` on PATH")


def _go_environment() -> dict[str, str]:
    cache = cache_dir()
    env = dict(os.environ)
    env.update({
        "GOPATH": str(cache / "go"),
        "GOMODCACHE": str(cache / "go" / "pkg" / "mod"),
        "GOCACHE": str(cache / "go-build"),
        "GOBIN": str(helm_path().parent),
        # The Go that is installed builds it; no toolchain download behind the caller's back.
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        # Go makes its module cache read-only, which `rm -rf .cache` (make clean) cannot delete as a normal user.
        "GOFLAGS": " ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-modcacherw"])),
    })  # fmt: skip
    return env


def _build_identity() -> str:
    return f"{HELM_MODULE}@{HELM_VERSION} ldflags={LDFLAGS}"


def build() -> Path:
    """The pinned helm, built on first use and reused after."""
    binary, stamp = helm_path(), _version_stamp()
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == _build_identity():
        return binary
    go = _go()
    binary.parent.mkdir(parents=True, exist_ok=True)
    print(f"building helm {HELM_VERSION} into {binary} (the first build takes a few minutes)", file=sys.stderr)
    started = time.monotonic()
    done = subprocess.run(
        [go, "install", f"-ldflags={LDFLAGS}", f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"],
        env=_go_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not binary.exists():
        raise HelmUnavailable(
            f"`go install {HELM_MODULE}/cmd/helm@{HELM_VERSION}` failed (exit {done.returncode}):\n"
            f"{(done.stderr or done.stdout).strip()[-3000:]}"
        )
    stamp.write_text(_build_identity() + "\n")
    print(f"built helm in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return binary


def helm_environment() -> dict[str, str]:
    """Helm's own folders inside the checkout: nothing read from or written to the user's home."""
    helm_home = cache_dir() / "helm"
    env = dict(os.environ)
    env.update({
        "HELM_CACHE_HOME": str(helm_home / "cache"),
        "HELM_CONFIG_HOME": str(helm_home / "config"),
        "HELM_DATA_HOME": str(helm_home / "data"),
    })  # fmt: skip
    return env


def run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm with ``args``; its output captured."""
    done = subprocess.run(
        [str(build()), *args], env=helm_environment(), capture_output=True, text=True, check=False, cwd=ROOT
    )
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done


def ci_value_sets() -> list[Path]:
    """The chart's example value sets (deploy/helm/ferry/ci/*-values.yaml): each one must lint and render."""
    return sorted((CHART / "ci").glob("*-values.yaml"))


def lint() -> int:
    """``helm lint --strict`` and ``helm template`` with every value set; the first failure is printed and fails."""
    failures = 0
    value_sets = ci_value_sets()
    if not value_sets:
        print(f"no value sets in {CHART / 'ci'}: nothing to lint with", file=sys.stderr)
        return 1
    for values in value_sets:
        label = values.relative_to(ROOT)
        for verb in (["lint", "--strict"], ["template", "ferry"]):
            done = run([*verb, str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values)], check=False)
            if done.returncode != 0:
                failures += 1
                print(f"helm {verb[0]} with {label}: FAILED\n{done.stdout}{done.stderr}", file=sys.stderr)
            else:
                print(f"helm {verb[0]} with {label}: ok")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.helm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the pinned helm into .cache/bin (once) and print its path")
    sub.add_parser("lint", help="lint and render the chart with each value set in its ci/ folder")
    passthrough = sub.add_parser("run", help="run the pinned helm with the given arguments")
    passthrough.add_argument("helm_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build())
            return 0
        if args.command == "lint":
            return lint()
        done = run(args.helm_args, check=False)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    except HelmUnavailable as exc:
        print(f"helm unavailable: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
