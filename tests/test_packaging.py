"""A non-editable install must carry every module and every config: build the wheel and look inside."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_holds_every_package_config_and_recipe(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("divrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"runner/{p.relative_to(REPO / 'runner').as_posix()}" for p in (REPO / "runner").rglob("*.py")}
    configs = {f"runner/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    recipes = {f"runner/recipes/{p.name}" for p in (REPO / "recipes").glob("*.yaml")}
    plugins = {p.relative_to(REPO).as_posix() for p in (REPO / "hydra_plugins").rglob("*.py")}
    assert not sources - names, f"modules missing from the wheel: {sorted(sources - names)}"
    assert not configs - names, f"configs missing from the wheel: {sorted(configs - names)}"
    assert not (recipes | plugins) - names
