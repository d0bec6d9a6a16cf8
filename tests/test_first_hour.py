"""A newcomer's first hour: the README's two commands work in either order on a fresh clone.

`make demo` leaves `runs/` at the root; `make test` then lints the tree. The lint must not depend on
what a run left there (a bench helper named `runs` once made ruff sort its imports differently).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make_recipe(target: str) -> list[str]:
    """The shell lines of a Makefile target, as `make` would run them."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{target}:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def _fresh_clone(dest: Path) -> Path:
    """The tracked files of this checkout (what a clone holds), copied to dest."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return _fresh_clone(tmp_path / "veil")


def _lint_lines() -> list[str]:
    lint = [line for line in _make_recipe("test") if " ruff " in f" {line.replace('/', ' ')} "]
    assert lint, "make test runs ruff"
    bin_dir = str(Path(sys.executable).parent)
    return [line.replace("$(BIN)", bin_dir) for line in lint]


def test_make_test_lints_clean_after_make_demo(clone: Path, smoke_run: Path) -> None:
    """`make demo` then `make test`: the lint sees the runs/ folder a real run left behind."""
    assert _make_recipe("demo"), "make demo exists"
    shutil.copytree(smoke_run, clone / "runs" / "quickstart-20261203-081500", symlinks=True)
    for line in _lint_lines():
        done = subprocess.run(line, shell=True, cwd=clone, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}{done.stderr[-2000:]}"


def test_make_test_lints_clean_on_a_fresh_clone(clone: Path) -> None:
    """The reverse order starts from a clone with nothing in it but the tracked files."""
    for line in _lint_lines():
        done = subprocess.run(line, shell=True, cwd=clone, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
