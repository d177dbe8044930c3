"""doctrain installed as a package, away from the checkout: its console script and its schema work."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, copy_workflow

pytestmark = pytest.mark.slow


def test_an_installed_doctrain_loads_configs_and_checks_manifests(tmp_path, image_tree):
    source = copy_workflow(tmp_path / "source")  # building writes into the tree it builds
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-qw", tmp_path, source], check=True)
    (wheel,) = tmp_path.glob("doctrain-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "-t", site, wheel], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "mine.yaml").write_text("data: {manifest: m.csv}\n")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}

    def run(*command) -> str:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run(sys.executable, "-c", "import doctrain; print(doctrain.__file__)").startswith(str(site))
    code = "from doctrain.config import load_config; print(load_config('mine.yaml')['loss']['name'])"
    assert run(sys.executable, "-c", code).strip() == "cosface"
    doctrain = site / "bin" / "doctrain"  # the console script pyproject.toml promises
    assert run(doctrain, "manifest", "build", image_tree, "-o", "m.csv").startswith("m.csv: 10 images")
    assert "m.csv: OK" in run(doctrain, "manifest", "check", "m.csv")
