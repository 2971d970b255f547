"""Whether .venv already holds a build of segops that a command can reuse (scripts/setup_env.sh asks).

A build is reusable when it was made from the same sources, build settings and torch, and has every part the
command needs: the CUDA kernels (`--cuda`) and the kernel emulation (`--emulation`). So
`./scripts/bench.sh` after `./scripts/test.sh` (or the other way round) builds once.

    python tools/build_stamp.py check [--cuda] [--emulation]   exit 0: reuse; 1: build (the reason printed)
    python tools/build_stamp.py write                          after a build: record what it holds
"""

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = ROOT / "build" / "segops-build.json"
# What the compiled modules are made of; anything else (the Python package, tests) is read at run time.
SOURCE_GLOBS = ("setup.py", "pyproject.toml", "version.txt", "tools/*.py", "csrc/**/*")
# Build settings read by setup.py that change the binaries without changing which parts are built: a command that
# sets one needs a build made with the same value; one that leaves it unset takes any (bench.sh after test.sh).
SETTINGS = ("TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "SEGOPS_SANITIZE")


def fingerprint() -> str:
    digest = hashlib.sha256()
    for pattern in SOURCE_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"torch={metadata.version('torch')}".encode())
    return digest.hexdigest()


def built_parts() -> dict:
    """What the installed build holds, asked of segops itself in a fresh interpreter."""
    probe = (
        "import json, segops, importlib.util as u;"
        "print(json.dumps({'cuda': segops.cuda_version() is not None,"
        " 'emulation': u.find_spec('segops._emulation') is not None}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"build_stamp: segops does not import after the build:\n{result.stderr}")
    parts = json.loads(result.stdout)
    return parts


def check(needed: dict) -> str:
    """The reason to build, or '' when the recorded build serves."""
    if not STAMP.exists():
        return "no build recorded"
    installed = importlib.util.find_spec("segops")
    if installed is None or Path(installed.origin).parent != ROOT / "segops" or not list(ROOT.glob("segops/_C*.so")):
        return "segops is not installed from this tree"
    recorded = json.loads(STAMP.read_text())
    if recorded.get("fingerprint") != fingerprint():
        return "sources or torch changed since the last build"
    for name in SETTINGS:
        asked, built = os.environ.get(name, ""), recorded.get("settings", {}).get(name, "")
        if asked != built and (asked or name == "SEGOPS_SANITIZE"):
            return f"the last build had {name}={built!r}, this one asks {asked!r}"
    missing = [part for part, wanted in needed.items() if wanted and not recorded.get(part)]
    if missing:
        return f"the last build lacks: {', '.join(missing)}"
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tools/build_stamp.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "write"])
    for part in ("cuda", "emulation"):
        parser.add_argument(f"--{part}", action="store_true", help=f"the command needs the build's {part}")
    args = parser.parse_args(argv)
    if args.command == "write":
        STAMP.parent.mkdir(parents=True, exist_ok=True)
        settings = {name: os.environ.get(name, "") for name in SETTINGS}
        STAMP.write_text(
            json.dumps({"fingerprint": fingerprint(), "settings": settings, **built_parts()}, indent=2) + "\n"
        )
        return 0
    reason = check({"cuda": args.cuda, "emulation": args.emulation})
    print(f"segops: {reason}: building" if reason else "segops: reusing the build in .venv (sources unchanged)")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
