"""tinyllava-push: validation errors, the dry run, and the upload call (HfApi monkeypatched; no network)."""

import json
import re
import shutil
import subprocess
import sys

import huggingface_hub
import pytest
from huggingface_hub import HfApi, ModelCard

from tinyllava_hf.model_cards import PublishError, push, write_model_card
from tinyllava_hf.model_cards import publish as publish_module
from tinyllava_hf.model_cards.cli import push_main

REPO_ID = "me/tiny-tinyllava"
POPE = {
    "task": "pope",
    "dataset_name": "POPE",
    "dataset_type": "lmms-lab/POPE",
    "split": "test",
    "metrics": {"accuracy": 0.85},
}


@pytest.fixture
def publishable_dir(saved_model_dir, tmp_path):
    """A saved model with its card and the leftovers a Trainer run writes beside it."""
    path = tmp_path / "tiny-tinyllava"
    shutil.copytree(saved_model_dir, path)
    write_model_card(path)
    (path / "checkpoint-2").mkdir()
    (path / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    (path / "training_args.bin").write_bytes(b"args")
    return path


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))


def relative_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_dry_run_writes_exactly_the_upload(publishable_dir, tmp_path, no_token):
    out = tmp_path / "dry"
    files = push(publishable_dir, REPO_ID, dry_run=out)
    assert relative_files(out) == files
    assert "training_args.bin" not in files and not any(f.startswith("checkpoint-2") for f in files)
    assert {"config.json", "model.safetensors", "modeling_tinyllava.py", "processor_config.json", "README.md"} <= set(
        files
    )
    for name in files:
        if name != "README.md":
            assert (out / name).read_bytes() == (publishable_dir / name).read_bytes(), name
    card = ModelCard.load(out / "README.md")
    assert f'model_id = "{REPO_ID}"' in card.text and "your-username/" not in card.text
    assert card.data.model_name == "tiny-tinyllava"
    assert "your-username/" in (publishable_dir / "README.md").read_text()  # a dry run changes nothing in DIR


@pytest.mark.parametrize("adapter_base", ["HOME/pretrain", "me/tiny-tinyllava-base"], ids=["local-base", "hub-base"])
def test_lora_stage_side_folders(publishable_dir, tmp_path, adapter_base):
    """The merged model is uploaded; base_model/ never, adapter/ only when others can load its base."""
    adapter_base = adapter_base.replace("HOME", str(tmp_path))
    (tmp_path / "pretrain").mkdir()
    (publishable_dir / "adapter").mkdir()
    (publishable_dir / "adapter" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": adapter_base})
    )
    (publishable_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (publishable_dir / "base_model").mkdir()
    (publishable_dir / "base_model" / "model.safetensors").write_bytes(b"untrained")
    files = publish_module.publishable_files(publishable_dir)
    assert "model.safetensors" in files and not any(f.startswith("base_model/") for f in files)
    adapter_files = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    if adapter_base == "me/tiny-tinyllava-base":
        assert adapter_files <= set(files)
    else:
        assert not adapter_files & set(files)


def test_upload_uses_upload_folder_with_the_dry_run_file_list(publishable_dir, monkeypatch):
    calls = {}
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(publish_module, "check_loads", lambda path, remote_code: "loaded (stubbed)")
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo_id, **kwargs: (
            calls.setdefault("create", (repo_id, kwargs)) and f"https://huggingface.co/{repo_id}"
        ),
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.setdefault("upload", kwargs))

    files = push(publishable_dir, REPO_ID, private=True)
    assert calls["create"] == (REPO_ID, {"private": True, "exist_ok": True})
    upload = calls["upload"]
    assert upload["repo_id"] == REPO_ID and upload["folder_path"] == publishable_dir
    assert upload["allow_patterns"] == files == publish_module.publishable_files(publishable_dir)
    assert f'model_id = "{REPO_ID}"' in (publishable_dir / "README.md").read_text()


def test_missing_token_is_a_clear_error(publishable_dir, no_token, monkeypatch):
    monkeypatch.setattr(publish_module, "check_loads", lambda *args: pytest.fail("validation ran before the token"))
    with pytest.raises(PublishError, match="No Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push(publishable_dir, REPO_ID)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("README.md", "README.md (write it with `tinyllava-card"),
        ("modeling_tinyllava.py", "modeling_tinyllava.py (remote code named in auto_map)"),
        ("model.safetensors", "model weights (*.safetensors)"),
        ("processor_config.json", "processor_config.json"),
        ("tokenizer.json", "tokenizer files"),
    ],
)
def test_missing_files_are_named(publishable_dir, tmp_path, remove, message):
    (publishable_dir / remove).unlink()
    with pytest.raises(PublishError, match=re.escape("not a complete model repo; missing:\n  - " + message)):
        push(publishable_dir, REPO_ID, dry_run=tmp_path / "dry")


def test_card_without_required_metadata_is_refused(publishable_dir, tmp_path):
    (publishable_dir / "README.md").write_text("---\nlicense: mit\n---\n# My model\n")
    with pytest.raises(PublishError, match="card metadata lacks pipeline_tag, library_name"):
        push(publishable_dir, REPO_ID, dry_run=tmp_path / "dry")


def test_card_older_than_eval_results_is_refused(publishable_dir, tmp_path):
    (publishable_dir / "eval_results.json").write_text(json.dumps({"results": [POPE]}))
    with pytest.raises(PublishError, match="the card is older than the results"):
        push(publishable_dir, REPO_ID, dry_run=tmp_path / "dry")


def test_broken_remote_code_fails_the_load_check(publishable_dir, tmp_path):
    # The installed package is hidden from the check, so only the shipped copy of the code counts.
    (publishable_dir / "modeling_tinyllava.py").write_text("raise ImportError('shipped code is broken')\n")
    with pytest.raises(PublishError, match="does not load as a Hub user would load it(.|\n)*shipped code is broken"):
        push(publishable_dir, REPO_ID, dry_run=tmp_path / "dry")
    assert not (tmp_path / "dry").exists()


def test_push_cli_reports_errors_without_a_traceback(publishable_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        push_main([str(publishable_dir), "not a/valid/repo"])
    assert "tinyllava-push: error: Invalid repo id 'not a/valid/repo'" in str(exit_info.value)


def test_load_check_hides_only_the_repository_packages(tmp_path):
    # The layout of `python -m venv .venv` inside the checkout: site-packages lives under the repository root.
    repo = tmp_path / "repo"
    site_packages = repo / ".venv" / "lib" / "site-packages"
    for package in (repo / "modeling_tinyllava", repo / "tinyllava_hf", site_packages / "third_party"):
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
    script = (
        "import importlib.util, sys\n"
        f"sys.path[:0] = [{str(repo)!r}, {str(site_packages)!r}]\n"
        "from tinyllava_hf.model_cards.load_check import hide_repository\n"
        "import pathlib\n"
        f"hide_repository(pathlib.Path({str(repo)!r}))\n"
        "import third_party\n"
        "for name in ('modeling_tinyllava', 'tinyllava_hf.training'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        print('hidden', name, error.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hidden modeling_tinyllava modeling_tinyllava",
        "hidden tinyllava_hf.training tinyllava_hf.training",
    ]
