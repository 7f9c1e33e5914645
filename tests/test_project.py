"""The project's own files agree with each other (install pins, CI entry point)."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip_section if not r.startswith("-")]
    assert sorted(map(_norm, listed)) == sorted(map(_norm, wanted))


def test_torch_pinned_first_in_makefile():
    make = (ROOT / "Makefile").read_text()
    torch_at = make.index("pip install --quiet torch==2.13.0")
    assert torch_at < make.index("-e '.[test]'") < make.index("--no-deps -r requirements-assets.txt")
    assert "torch==2.13.0" in (ROOT / "pyproject.toml").read_text()


def test_ci_calls_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_asset_pins_match_embedded_models():
    from layerif.models import EMBEDDED_MODELS

    pins = (ROOT / "requirements-assets.txt").read_text()
    for spec in EMBEDDED_MODELS.values():
        assert f"{spec.package.replace('_', '-')}=={spec.version}" in pins
    assert "ai2-olmo==0.6.0" in pins


def test_every_notebook_has_params_for_every_profile():
    from layerif import study

    for name in study.list_notebooks(ROOT):
        for profile in study.PROFILES:
            params = study.load_params(name, profile, ROOT)
            assert params["profile"] == profile
            assert (ROOT / "params" / profile / f"{name}.yaml").exists(), (name, profile)
