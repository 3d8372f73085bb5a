"""The built wheel holds the whole package: an editable install stays green when a subpackage,
the native source or a preset is missing from pyproject's packaging, so this test builds a real
wheel, installs it into a clean venv that cannot see the checkout, and imports every module."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastdqn"
CSRC = ROOT / "csrc"
BUILD_FILES = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE")
"""What a build reads besides the two source folders (those that exist are copied)."""

pytestmark = pytest.mark.slow


def _source_modules() -> list[str]:
    """Every module of the source tree, so one missing from the wheel fails the import below."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, offline: an in-tree build would leave build/ and
    egg-info in the checkout that other tests and runs share."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "*.pyc")
    shutil.copytree(PACKAGE, src / "fastdqn", ignore=ignore)
    shutil.copytree(CSRC, src / "csrc", ignore=ignore)
    for name in BUILD_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(out), str(src)])
    (wheel,) = out.glob("fastdqn-*.whl")
    return wheel


def _clean_venv(tmp: Path) -> tuple[Path, Path]:
    """A venv that sees this environment's dependencies (torch, numpy, ...) through a .pth of
    plain paths but not fastdqn: site processes no .pth file inside the directories such a line
    adds, so the editable install's finder never loads there. Returns (python, site-packages)."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                   .stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_outer_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return python, purelib


IMPORT_ALL = textwrap.dedent("""
    import importlib, importlib.util, json, sys
    from pathlib import Path
    failed, missing_deps, cpp = {}, {}, []
    for name in json.loads(sys.argv[1]):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top and top != "fastdqn" and importlib.util.find_spec(top) is None:
                missing_deps[name] = e.name
            else:
                failed[name] = repr(e)
            continue
        except Exception as e:
            failed[name] = repr(e)
            continue
        cpp += [str(v) for v in vars(module).values() if isinstance(v, Path) and v.suffix == ".cpp"]
    import fastdqn
    print(json.dumps({"file": fastdqn.__file__, "failed": failed, "missing_deps": missing_deps,
                      "cpp": cpp}))
""")


def test_wheel_installs_every_module_source_and_preset(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())

    sources = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".toml")
               and "__pycache__" not in p.parts]
    expected = {p.relative_to(ROOT).as_posix() for p in sources}
    expected |= {f"fastdqn/_csrc/{p.name}" for p in CSRC.glob("*.cpp")}
    assert "fastdqn/_csrc/fused_step.cpp" in expected
    assert any(p.suffix == ".toml" for p in sources), "no preset found in the source tree"
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"

    python, purelib = _clean_venv(tmp_path)
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
          "--target", str(purelib), str(wheel)])
    installed = purelib / "fastdqn"
    modules = [m for m in _source_modules() if m != "fastdqn.__main__"]  # that one runs the CLI
    result = _run([str(python), "-c", IMPORT_ALL, json.dumps(modules)], cwd=tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert Path(report["file"]).resolve().is_relative_to(installed.resolve()), report["file"]
    assert not report["failed"], f"modules that do not import from the wheel: {report['failed']}"
    if report["missing_deps"]:
        print(f"not imported, optional dependency not installed: {report['missing_deps']}")
    for path in report["cpp"]:  # where the native build looks for its source, once installed
        assert Path(path).is_file() and Path(path).resolve().is_relative_to(installed.resolve()), path

    presets = _run([str(python), "-m", "fastdqn", "presets"], cwd=tmp_path).stdout.split()
    shipped = sorted(p.stem for p in PACKAGE.rglob("*.toml") if "presets" in p.parts)
    assert sorted(presets) == shipped
