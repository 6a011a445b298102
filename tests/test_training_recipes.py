"""The recipes end to end through `tinyllava-train`: trainable parameters per recipe, short trainings whose loss
falls, the Hub-ready output of each stage, the next stage starting from it, and argument errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assemble
from training_helpers import train_argv, write_llava_dataset

from tinyllava_hf.training.arguments import ModelArguments
from tinyllava_hf.training.cli import RECIPE_NAMES, RECIPES_DIR, main, parse_args, run
from tinyllava_hf.training.train import load_model
from tinyllava_hf.training.tuning import apply_lora, module_of, optimizer_param_groups, set_trainable

HUB_FILES = {
    "config.json", "model.safetensors", "generation_config.json", "processor_config.json", "chat_template.jinja",
    "tokenizer.json", "configuration_tinyllava.py", "modeling_tinyllava.py", "processing_tinyllava.py",
    "tinyllava_run.json", "loss_curve.png", "README.md", "trainer_state.json",
}  # fmt: skip


def recipe_model_args(recipe: str, **overrides) -> ModelArguments:
    """The recipe's ModelArguments fields, as the CLI would parse them."""
    values = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())
    fields = {k: v for k, v in values.items() if k in ModelArguments.__dataclass_fields__}
    return ModelArguments(model_name_or_path="unused", **{**fields, **overrides})


def trainable_modules(model, model_args) -> dict[str, int]:
    counts = set_trainable(model, model_args)
    return {module for module, count in counts.items() if count}


@pytest.mark.parametrize(
    "recipe, expected",
    [("pretrain", {"connector"}), ("finetune", {"llm", "connector"}), ("share", {"llm", "connector"})],
)
def test_recipe_trainable_modules(components_dir, recipe, expected):
    model, _ = assemble(components_dir, "llama", "siglip")
    model_args = recipe_model_args(recipe)
    assert trainable_modules(model, model_args) == expected
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (module_of(name) in expected), name


def test_lora_recipe_trains_llm_adapters_and_the_connector_only(components_dir):
    model, _ = assemble(components_dir, "phi", "siglip")
    model_args = recipe_model_args("finetune_lora", lora_r=4, lora_alpha=8)
    peft_model = apply_lora(model, model_args)
    set_trainable(peft_model, model_args)
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    # Phi's attention and MLP linears: q, k, v, dense, fc1, fc2 in each of 2 layers, A and B each.
    assert len(lora) == 2 * 6 * 2 and all(module_of(name) == "llm" for name in lora)
    assert {module_of(name) for name in trainable if "lora_" not in name} == {"connector"}
    assert all(".modules_to_save." in name for name in trainable if module_of(name) == "connector")


@pytest.mark.parametrize("vision", ["siglip", "dinov2"])
def test_partial_vision_tower_tunes_encoder_layers_from_k(components_dir, vision):
    model, _ = assemble(components_dir, "llama", vision)
    model_args = ModelArguments(model_name_or_path="x", tune_llm="frozen", tune_connector="frozen",
                                tune_vision_tower="partial", tune_vision_tower_from_layer=1)  # fmt: skip
    set_trainable(model, model_args)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(".layer.1." in name or ".layers.1." in name for name in trainable)
    assert not any(".0." in name.split("encoder.")[-1][:8] for name in trainable)


def test_lora_target_regex_must_stay_in_the_language_model(components_dir):
    model, _ = assemble(components_dir, "llama", "siglip")
    model_args = recipe_model_args("finetune_lora", lora_target_modules=r".*\.(q_proj|v_proj)")
    with pytest.raises(ValueError, match="also matches layers of \\['vision_tower'\\]"):
        apply_lora(model, model_args)


def test_module_learning_rates_become_optimizer_groups(components_dir):
    model, _ = assemble(components_dir, "llama", "siglip")
    model_args = recipe_model_args("finetune")
    set_trainable(model, model_args)
    groups = optimizer_param_groups(model, 0.1, {n for n, _ in model.named_parameters() if "bias" not in n},
                                    {"connector": 0.5})  # fmt: skip
    connector_ids = {id(p) for p in model.model.connector.parameters()}
    for group in groups:
        in_connector = {id(p) in connector_ids for p in group["params"]}
        assert len(in_connector) == 1
        assert group.get("lr") == (0.5 if in_connector == {True} else None)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_qlora_without_gpu_is_a_clear_error(tmp_path):
    data = write_llava_dataset(tmp_path)
    with pytest.raises(RuntimeError, match="qlora needs a CUDA GPU"):
        main(train_argv("finetune_qlora", tmp_path / "out", data, "--model_name_or_path", str(tmp_path)))


def test_recipe_errors_name_the_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nlearnin_rate_typo: 3\n")
    with pytest.raises(ValueError, match=r"Unknown key\(s\) in recipe .*bad.yaml: learnin_rate_typo"):
        parse_args([str(recipe), "--model_name_or_path", "x", "--data_path", "d.json", "--output_dir", "o"])
    with pytest.raises(ValueError, match="Unknown argument.*--no_such_flag"):
        parse_args(
            ["finetune", "--model_name_or_path", "x", "--data_path", "d", "--output_dir", "o", "--no_such_flag", "1"]
        )
    with pytest.raises(FileNotFoundError, match="neither a file nor one of pretrain"):
        parse_args(["finetun", "--model_name_or_path", "x"])
    with pytest.raises(ValueError, match="tune_llm must be one of"):
        parse_args(
            ["finetune", "--model_name_or_path", "x", "--data_path", "d", "--output_dir", "o", "--tune_llm", "half"]
        )


def test_python_m_training_is_the_cli():
    result = subprocess.run([sys.executable, "-m", "tinyllava_hf.training", "finetune", "--help"], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for flag in ("--llm", "--vision_tower", "--model_name_or_path", "--data_path", "--on_bad_sample", "--max_steps"):
        assert flag in result.stdout


def test_every_recipe_parses_and_the_command_line_overrides_it():
    for recipe in RECIPE_NAMES:
        model_args, data_args, args, name = parse_args(
            [
                recipe,
                "--model_name_or_path",
                "x",
                "--data_path",
                "d.json",
                "--output_dir",
                "o",
                "--learning_rate",
                "0.5",
            ]
        )
        assert name == recipe and args.learning_rate == 0.5 and data_args.data_path == ["d.json"]
        assert model_args.tune_llm == {"pretrain": "frozen", "finetune": "full", "share": "full",
                                       "finetune_lora": "lora", "finetune_qlora": "qlora"}[recipe]  # fmt: skip
        assert args.num_train_epochs == 1 and args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.03
    assert (
        parse_args(["pretrain", "--model_name_or_path", "x", "--data_path", "d", "--output_dir", "o"])[2].learning_rate
        == 1e-3
    )


def losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_pretrain_then_finetune_chain(components_dir, tmp_path):
    """pretrain (new model) -> finetune (from the pretrain dir), each 3 steps on a memorizable batch."""
    data = write_llava_dataset(tmp_path)
    new_model = ["--llm", str(components_dir / "qwen2"), "--vision_tower", str(components_dir / "siglip")]
    pretrain_dir = run(
        train_argv("pretrain", tmp_path / "pretrain", data, *new_model, "--learning_rate", "1e-2", "--seed", "0")
    )  # the seed `assemble` uses: the same fresh <image> embedding row
    finetune_dir = run(train_argv("finetune", tmp_path / "finetune", data, "--model_name_or_path", str(pretrain_dir),
                                   "--learning_rate", "3e-3"))  # fmt: skip
    for output_dir in (pretrain_dir, finetune_dir):
        assert HUB_FILES <= {path.name for path in output_dir.iterdir()}
        loss = losses(output_dir)
        assert len(loss) == 3 and all(math.isfinite(x) for x in loss) and loss[-1] < loss[0], loss
    stages = json.loads((finetune_dir / "tinyllava_run.json").read_text())["stages"]
    assert [stage["recipe"] for stage in stages] == ["pretrain", "finetune"]
    assert stages[1]["base_checkpoint"] == str(pretrain_dir) and stages[1]["steps"] == 3 and not stages[1]["lora"]
    # The pretrain stage trained captions, but its processor keeps the model's conversation template.
    assert "ASSISTANT:" in (pretrain_dir / "chat_template.jinja").read_text()
    # Pretrain froze everything but the connector.
    before, _ = assemble(components_dir, "qwen2", "siglip")
    after = load_model(*parse_args(["pretrain", "--model_name_or_path", str(pretrain_dir),
                                    "--data_path", "d", "--output_dir", "o"])[::2])  # fmt: skip
    after_state = after.state_dict()
    for name, tensor in before.state_dict().items():
        assert torch.equal(tensor, after_state[name]) != name.startswith("model.connector."), name


def test_share_recipe_trains(components_dir, tmp_path):
    data = write_llava_dataset(tmp_path)
    output_dir = run(train_argv("share", tmp_path / "share", data, "--llm", str(components_dir / "llama"),
                                 "--vision_tower", str(components_dir / "clip"), "--learning_rate", "3e-3"))  # fmt: skip
    loss = losses(output_dir)
    assert all(math.isfinite(x) for x in loss) and loss[-1] < loss[0], loss
