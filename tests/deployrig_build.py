"""Release bundles for the deploy tests: a signing key and `./deploy.sh build` into a temp dir.

Blocking. A host build takes ~10 s with pip's cache warm (it fetches wheels through pip the
first time): build once per session and share the bundle. `run_deploy` never raises on a
non-zero exit (tests check refusals); `make_key` and `build_bundle` raise DeployFailed with
deploy.sh's stderr when it fails.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy.sh"
BUILD_TIMEOUT = 600  # seconds: a cold pip cache downloads every wheel

__all__ = ["DEPLOY", "REPO", "DeployFailed", "build_bundle", "make_key", "run_deploy"]


class DeployFailed(Exception):
    """deploy.sh exited non-zero; the message holds its stderr."""


def run_deploy(*args: str, key: Path | None = None,
               timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs ./deploy.sh ARGS (KPOS_SIGNING_KEY=key when given); output captured as text."""
    env = dict(os.environ)
    if key is not None:
        env["KPOS_SIGNING_KEY"] = str(key)
    return subprocess.run([str(DEPLOY), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise DeployFailed(f"deploy.sh {result.args[1]} exit {result.returncode}: {result.stderr}")
    return result


def make_key(directory: Path) -> Path:
    """A fresh ed25519 signing key DIR/release-signing.pem (0600); its public key is KEY.pub."""
    key = Path(directory) / "release-signing.pem"
    _checked(run_deploy("keygen", str(key)))
    return key


def build_bundle(out_dir: Path, version: str, key: Path, *, platform: str = "host",
                 mender: bool = False) -> Path:
    """Builds OUT/kpos-<version>.tar signed with key (+ OUT/kpos-<version>.mender) and
    returns the tar's path."""
    args = ["build", "--version", version, "--platform", platform, "--out", str(out_dir)]
    if mender:
        args.append("--mender")
    _checked(run_deploy(*args, key=key))
    return Path(out_dir) / f"kpos-{version}.tar"
