"""`tinyllava-convert to-onnx`: the exported graphs, run by ONNX Runtime, reproduce the torch model.

Each export here goes through the real CLI, so the conversion's own parity check has passed for it; the tests then
check what a user relies on, with other inputs: image features and logits (padded batches included), greedy decoding
with the key/value cache in NumPy (the shipped example), the example without torch, and int8 on a trained model.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assemble, chat, make_image
from onnx_helpers import held_out_answers

from modeling_tinyllava.modeling_tinyllava import stack_image_features
from tinyllava_hf.conversion import ConversionError
from tinyllava_hf.conversion import onnx_runtime_example as example
from tinyllava_hf.conversion.cli import main as convert_main
from tinyllava_hf.conversion.onnx_graphs import cache_shape, past_names

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "conversion" / "onnx_runtime_example.py"
EXPORTS = [("llama", "siglip"), ("gemma", "clip")]

# Runs a script with torch unimportable, as in an environment where it is not installed: every import finder is
# wrapped to find nothing named torch (importlib.util.find_spec, which transformers asks, then says None too).
NO_TORCH_RUNNER = """
import importlib.abc, runpy, sys

class HideTorch(importlib.abc.MetaPathFinder):
    def __init__(self, finder):
        self.finder = finder

    def __getattr__(self, name):
        return getattr(self.finder, name)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch" or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

sys.meta_path[:] = [HideTorch(finder) for finder in sys.meta_path]
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
assert "torch" not in sys.modules, "the example imported torch"
"""


def export(src_model, processor, root: Path, *extra: str) -> Path:
    src, dst = root / "src", root / "onnx-export"
    src_model.save_pretrained(src)
    processor.save_pretrained(src)
    assert convert_main(["to-onnx", str(src), str(dst), *extra]) == 0
    return dst


@pytest.fixture(scope="module", params=EXPORTS, ids=["-".join(pair) for pair in EXPORTS])
def exported(request, components_dir, tmp_path_factory):
    """(model, processor, export dir) for one LLM family and vision tower."""
    family, vision = request.param
    model, processor = assemble(components_dir, family, vision)
    dst = export(model, processor, tmp_path_factory.mktemp(f"onnx-{family}-{vision}"))
    return model.eval(), processor, dst


def test_export_layout_and_names(exported):
    model, _, dst = exported
    num_layers, kv_heads, head_dim = cache_shape(model)
    sessions = example.load_sessions(dst)
    io = {name: ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]) for name, s in sessions.items()}
    assert io["vision_encoder"] == (["pixel_values"], ["image_features"])
    assert io["embed_tokens"] == (["input_ids"], ["inputs_embeds"])
    presents = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    assert io["decoder_model_merged"] == (
        ["inputs_embeds", "attention_mask", "position_ids", *past_names(num_layers)],
        ["logits", *presents],
    )
    past = sessions["decoder_model_merged"].get_inputs()[3]
    assert past.shape[1:] == [kv_heads, "past_sequence_length", head_dim]
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json", "README.md"):
        assert (dst / name).is_file(), name
    record = json.loads((dst / "conversion.json").read_text())
    assert record["format"] == "onnx" and record["max_abs_logit_diff"] <= 1e-4


@torch.no_grad()
def test_image_features_and_padded_prefill_logits_match_torch(exported):
    model, processor, dst = exported
    sessions = example.load_sessions(dst)
    pixel_values = processor(text="<image><image>", images=[make_image(seed=1), make_image(30, 50, seed=2)])[
        "pixel_values"
    ]
    features = sessions["vision_encoder"].run(None, {"pixel_values": np.asarray(pixel_values, np.float32)})[0]
    reference = stack_image_features(model.get_image_features(torch.as_tensor(np.asarray(pixel_values))))
    assert np.abs(features - reference.numpy()).max() <= 1e-4

    # Two prompts of different lengths, left-padded as for batched generation.
    processor.tokenizer.padding_side = "left"
    prompts = [
        processor.apply_chat_template(chat(question, image=make_image(seed=3)), add_generation_prompt=True)
        for question in ("What is shown in the image?", "Colour?")
    ]
    inputs = processor(text=prompts, images=[make_image(seed=3)] * 2, return_tensors="pt", padding=True)
    reference = model(**inputs).logits.numpy()
    ids = inputs["input_ids"].numpy()
    mask = inputs["attention_mask"].numpy()
    embeds = sessions["embed_tokens"].run(None, {"input_ids": ids})[0]
    image_features = sessions["vision_encoder"].run(None, {"pixel_values": inputs["pixel_values"].numpy()})[0]
    embeds[ids == model.config.image_token_id] = image_features.reshape(-1, embeds.shape[-1])
    num_layers, kv_heads, head_dim = cache_shape(model)
    feeds = {
        "inputs_embeds": embeds,
        "attention_mask": mask,
        "position_ids": np.clip(mask.cumsum(-1) - 1, 0, None),
        **{name: np.zeros((2, kv_heads, 0, head_dim), np.float32) for name in past_names(num_layers)},
    }
    logits = sessions["decoder_model_merged"].run(None, feeds)[0]
    real = mask.astype(bool)  # padded positions have no defined output
    assert np.abs(logits[real] - reference[real]).max() <= 1e-4


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
@torch.no_grad()
def test_numpy_cache_loop_gives_the_tokens_of_generate(exported, with_image):
    model, processor, dst = exported
    image = make_image(seed=5) if with_image else None
    messages = chat("Describe the picture.", image=image)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = model.generate(**inputs, max_new_tokens=32, do_sample=False)[0, inputs["input_ids"].shape[1] :]

    input_ids, pixel_values = example.prepare_inputs(dst, "Describe the picture.", image)
    assert input_ids.tolist() == inputs["input_ids"].tolist()  # the example's own tokenization, no processor
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    sessions = example.load_sessions(dst)
    tokens = example.generate(sessions, input_ids, pixel_values, model.config.image_token_id, eos_ids, 32)
    assert len(tokens) == 32  # no early end of sequence: all 32 tokens are compared
    assert tokens == expected.tolist()


@torch.no_grad()
def test_example_script_runs_without_torch(exported, tmp_path):
    model, processor, dst = exported
    image = make_image(seed=7)
    image.save(tmp_path / "photo.png")
    inputs = processor.apply_chat_template(
        chat("What is shown in the image?", image=image),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    expected = processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
    command = [sys.executable, "-c", NO_TORCH_RUNNER, str(EXAMPLE), str(dst), "What is shown in the image?"]
    command += ["--image", str(tmp_path / "photo.png"), "--max-new-tokens", "8"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == expected


def test_model_card_and_readme_carry_the_tested_example(exported):
    _, _, dst = exported
    code = EXAMPLE.read_text().strip()
    card = (dst / "README.md").read_text()
    assert code in card
    assert "AutoModelForImageTextToText" not in card  # no transformers weights in an ONNX export
    readme = (REPO_ROOT / "README.md").read_text()
    assert "python conversion/onnx_runtime_example.py onnx-out" in readme and EXAMPLE.is_file()


def test_unsupported_model_is_refused_by_name_and_nothing_is_written(components_dir, tmp_path):
    model, processor = assemble(components_dir, "qwen2", "siglip")
    model.config.text_config.use_sliding_window = True
    src, dst = tmp_path / "src", tmp_path / "out"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    with pytest.raises(ConversionError, match="sliding-window attention"):
        convert_main_raising(src, dst)
    assert not dst.exists()


def test_parity_failure_writes_nothing(exported, tmp_path):
    model, processor, _ = exported
    src, dst = tmp_path / "src", tmp_path / "out"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    # Every difference is above 0 (the ONNX kernels round differently), so this tolerance must fail the export.
    with pytest.raises(ConversionError, match="differs from the torch model by more than --atol"):
        convert_main_raising(src, dst, "--atol", "0")
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # the staging directory is gone too


def convert_main_raising(src: Path, dst: Path, *extra: str):
    from tinyllava_hf.conversion.cli import build_parser, run

    return run(build_parser().parse_args(["to-onnx", str(src), str(dst), *extra]))


@pytest.fixture(scope="module")
def trained_export(color_reader, tmp_path_factory):
    """The test-size model trained to read colors (`trained_vlm`), exported with --quantize int8."""
    root = tmp_path_factory.mktemp("onnx-trained")
    return export(color_reader.model, color_reader.processor, root, "--quantize", "int8")


def test_int8_agrees_with_fp32_on_held_out_answers(color_reader, trained_export):
    for name in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        assert (trained_export / "onnx" / f"{name}_int8.onnx").is_file()
    fp32 = held_out_answers(trained_export, color_reader.held_out, int8=False)
    int8 = held_out_answers(trained_export, color_reader.held_out, int8=True)
    assert fp32 == color_reader.answers  # the fp32 graphs answer exactly as torch does
    agreement = np.mean([a == b for a, b in zip(fp32, int8, strict=True)])
    assert agreement >= 0.9, list(zip(fp32, int8, strict=True))
