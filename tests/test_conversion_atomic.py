"""Every `tinyllava-convert` subcommand is all-or-nothing: a failed check leaves the output directory as it was."""

import pytest
from conftest import assemble
from conversion_helpers import write_factory_checkpoint, write_legacy_checkpoint

from tinyllava_hf.conversion import ConversionError, to_llava
from tinyllava_hf.conversion import llava as llava_module
from tinyllava_hf.conversion import original as original_module
from tinyllava_hf.conversion import output as output_module
from tinyllava_hf.conversion.cli import main


@pytest.fixture(scope="module")
def sources(components_dir, tmp_path_factory):
    """One source directory per subcommand."""
    root = tmp_path_factory.mktemp("sources")
    write_factory_checkpoint(components_dir, root / "factory", "llama", "siglip")
    write_legacy_checkpoint(components_dir, root / "legacy", "phi")
    model, processor = assemble(components_dir, "qwen2", "siglip")
    model.save_pretrained(root / "ours")
    processor.save_pretrained(root / "ours")
    to_llava(root / "ours", root / "llava")
    return {
        "factory": ["factory", str(root / "factory")],
        "legacy": ["legacy", str(root / "legacy"), "--vision-config", str(root / "legacy" / "vision_tower_config")],
        "to-llava": ["to-llava", str(root / "ours")],
        "from-llava": ["from-llava", str(root / "llava")],
    }


def fail_parity(monkeypatch):
    """The logit comparison with the original forward finds a difference (after every weight is written)."""
    monkeypatch.setattr(original_module, "check_original_parity", lambda *args, **kwargs: 0.5)
    return "logits differ from the original forward by 0.5"


def fail_reload(monkeypatch):
    """The strict reload of the written directory fails (from-llava's last check)."""

    def broken(path):
        raise ConversionError(f"{path}: checkpoint key 'x' is missing")

    monkeypatch.setattr(llava_module, "load_strict", broken)
    return "checkpoint key 'x' is missing"


def fail_card(monkeypatch):
    """Writing the model card, the very last step, fails."""

    def broken(path):
        raise OSError(f"disk full while writing {path}/README.md")

    monkeypatch.setattr(output_module.model_cards, "write_model_card", broken)
    return "disk full"


CASES = [
    ("factory", fail_parity),
    ("legacy", fail_parity),
    ("from-llava", fail_reload),
    ("factory", fail_card),
    ("legacy", fail_card),
    ("to-llava", fail_card),
    ("from-llava", fail_card),
]


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "empty"])
@pytest.mark.parametrize("command, failure", CASES, ids=[f"{c}-{f.__name__}" for c, f in CASES])
def test_failed_conversion_leaves_dst_as_it_was(sources, tmp_path, monkeypatch, capsys, command, failure, existing):
    dst = tmp_path / "nested" / "out"
    if existing:
        dst.mkdir(parents=True)
    message = failure(monkeypatch)
    argv = sources[command]
    if message.startswith("disk full"):
        with pytest.raises(OSError, match="disk full"):
            main([*argv[:2], str(dst), *argv[2:]])
    else:
        assert main([*argv[:2], str(dst), *argv[2:]]) == 1
        err = capsys.readouterr().err
        assert message in err and f"Nothing was written to {dst}." in err
        assert ".partial-" not in err  # paths are reported as the user gave them, not the staging directory
    if existing:
        assert dst.is_dir() and not any(dst.iterdir())
        assert list(tmp_path.rglob("*")) == [dst.parent, dst]  # no staging directory left beside it
    else:
        assert list(tmp_path.iterdir()) == []  # not even the parent directory it created


def test_successful_conversion_fills_an_existing_empty_dst(sources, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    argv = sources["factory"]
    assert main([*argv[:2], str(dst), "--no-verify"]) == 0
    assert (dst / "model.safetensors").is_file() and (dst / "conversion.json").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_dst_that_is_a_file_is_refused(sources, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.write_text("keep me")
    argv = sources["to-llava"]
    assert main([*argv[:2], str(dst)]) == 1
    assert f"The output directory {dst} is a file" in capsys.readouterr().err
    assert dst.read_text() == "keep me"
