"""Writing the generated package: atomic swap, diff for ``--check``."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from pathlib import Path


class GenerateError(RuntimeError):
    pass


def write_package(files: dict[str, str], out_dir: Path, package: str) -> list[str]:
    """Atomically replace ``out_dir/package`` with ``files``; return the names that changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package
    old = read_package(target)
    changed = sorted(set(files) ^ set(old) | {k for k in files if old.get(k) != files[k]})
    staging = Path(tempfile.mkdtemp(prefix=f".{package}-new-", dir=out_dir))
    try:
        for rel, text in files.items():
            (staging / rel).write_text(text, encoding="utf-8")
        # Keep Numba's on-disk cache of unchanged modules.
        cache = target / "__pycache__"
        if cache.is_dir():
            shutil.copytree(cache, staging / "__pycache__")
        backup = out_dir / f".{package}-old"
        if backup.exists():
            shutil.rmtree(backup)
        if target.exists():
            os.replace(target, backup)
        os.replace(staging, target)
        if backup.exists():
            shutil.rmtree(backup)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return changed


def read_package(target: Path) -> dict[str, str]:
    if not target.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(target.glob("*.py"))}


def diff_package(files: dict[str, str], target: Path) -> str:
    """Unified diff from what is on disk to what would be generated ('' when up to date)."""
    old = read_package(target)
    chunks = []
    for rel in sorted(set(files) | set(old)):
        a, b = old.get(rel, ""), files.get(rel, "")
        if a != b:
            chunks.extend(difflib.unified_diff(
                a.splitlines(keepends=True), b.splitlines(keepends=True),
                fromfile=f"{target.name}/{rel} (on disk)",
                tofile=f"{target.name}/{rel} (generated)"))
    return "".join(chunks)
