"""The source distribution holds what building and checking the package need."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("LICENSE", "setup.py", "pyproject.toml", "Makefile", "csrc/*", "kernels/*.py", "kernels/*.cu",
          "configs/*.toml", "tests/*.py", "docs/*.md", "bench/*.py", "bench/*.sh", "c2w_fast/**/*.py")


def _tracked_tree(target: Path) -> Path:
    """A copy of the files git tracks: no egg-info of an earlier build, whose file list
    setuptools would reuse and so hide a file the manifest misses."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def test_the_sdist_holds_the_sources_headers_tests_and_licence(tmp_path):
    pytest.importorskip("build", reason="the `test` extra installs build")
    pytest.importorskip("pybind11", reason="the `test` extra installs pybind11")
    tree = _tracked_tree(tmp_path / "tree")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check",
                    "--outdir", str(tmp_path / "dist"), str(tree)], check=True, capture_output=True)
    (sdist,) = (tmp_path / "dist").glob("c2w_fast-*.tar.gz")
    with tarfile.open(sdist) as archive:
        packed = {Path(*Path(name).parts[1:]).as_posix() for name in archive.getnames()}
    needed = {path.relative_to(tree).as_posix() for pattern in NEEDED for path in tree.glob(pattern)}
    assert "csrc/edt.hpp" in needed and "tests/conftest.py" in needed
    assert not sorted(needed - packed), f"not in the sdist: {sorted(needed - packed)}"
