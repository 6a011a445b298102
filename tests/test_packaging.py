"""The wheel installs only `modeling_tinyllava` and `tinyllava_hf` at the top level, with every tool folder inside."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_FOLDERS = ("training", "conversion", "evaluation", "model_cards", "chat", "demo")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory):
    # Built from a copy, so setuptools' build/ folder never lands in the checkout.
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for folder in ("modeling_tinyllava", "tinyllava_hf", *TOOL_FOLDERS):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_wheel_top_level_names(wheel_files):
    top_level = {name.split("/")[0] for name in wheel_files if ".dist-info/" not in name}
    assert top_level == {"modeling_tinyllava", "tinyllava_hf"}


def test_every_source_file_is_installed_under_the_namespace(wheel_files):
    # A subpackage missing from pyproject's explicit package list would silently vanish from the wheel.
    for folder in TOOL_FOLDERS:
        for source in (REPO_ROOT / folder).rglob("*"):
            if source.suffix in {".py", ".yaml", ".json", ".md"} and "__pycache__" not in source.parts:
                if source.name == "README.md":
                    continue
                installed = "tinyllava_hf/" + source.relative_to(REPO_ROOT).as_posix()
                assert installed in wheel_files, f"{source.relative_to(REPO_ROOT)} is not in the wheel"


def test_console_scripts_point_into_the_namespace(wheel_files):
    (entry_points,) = [wheel_files[name].decode() for name in wheel_files if name.endswith("entry_points.txt")]
    scripts = dict(line.split(" = ") for line in entry_points.splitlines() if " = " in line)
    assert {
        "tinyllava-train",
        "tinyllava-demo",
        "tinyllava-convert",
        "tinyllava-eval",
        "tinyllava-card",
        "tinyllava-push",
        "tinyllava-chat",
    } <= set(scripts)
    assert all(target.startswith("tinyllava_hf.") for target in scripts.values()), scripts


def test_builtin_chat_templates_are_package_data(wheel_files):
    templates = sorted((REPO_ROOT / "modeling_tinyllava" / "chat_templates").glob("*.jinja"))
    assert len(templates) == 6
    for source in templates:
        assert f"modeling_tinyllava/chat_templates/{source.name}" in wheel_files, source.name
