"""The package layers of pyproject.toml's import-linter contracts hold, and name every module."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in out.stdout


def test_every_application_module_is_in_a_layer():
    # A new bench/*.py outside the contract would escape the layering: name it in pyproject.toml.
    named = {m.strip() for c in _contracts() for layer in c["layers"] for m in layer.replace("|", ":").split(":")}
    app = {f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"}
    assert app <= named, f"modules of bench/ missing from the layers contract: {sorted(app - named)}"
    families = {f"tasks.{p.name}" for p in (ROOT / "tasks").iterdir() if (p / "__init__.py").is_file()}
    assert families <= named, sorted(families - named)
