"""Saved checkpoints: Auto classes, Hub remote code in a process without the package, and the pipeline."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from conftest import chat, make_image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    pipeline,
)
from transformers.dynamic_module_utils import get_imports

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaModel, TinyLlavaProcessor

REMOTE_CODE_FILES = {"configuration_tinyllava.py", "modeling_tinyllava.py", "processing_tinyllava.py"}


def _inputs(processor):
    return processor.apply_chat_template(
        chat(image=make_image()), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_saved_dir_is_a_complete_hub_repo(saved_model_dir):
    files = set(os.listdir(saved_model_dir))
    assert (
        REMOTE_CODE_FILES
        | {
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "processor_config.json",
            "tokenizer.json",
            "chat_template.jinja",
        }
        <= files
    )
    auto_map = json.loads((saved_model_dir / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForImageTextToText",
        "AutoProcessor",
    }
    for reference in auto_map.values():
        assert f"{reference.split('.')[0]}.py" in files
    processor_map = json.loads((saved_model_dir / "processor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoProcessor": "processing_tinyllava.TinyLlavaProcessor"}


def test_remote_code_is_only_the_config_modeling_processing_trio(saved_model_dir):
    # Assembly and the built-in template files stay in the package: a checkpoint carries its own template.
    files = set(os.listdir(saved_model_dir))
    assert {name for name in files if name.endswith(".py")} == REMOTE_CODE_FILES
    assert {name for name in files if name.endswith(".jinja")} == {"chat_template.jinja"}
    for name in REMOTE_CODE_FILES:
        # transformers' check_imports demands every package these files import (imports inside `try` are exempt),
        # so the lazy import of the assembly tools must not make a remote-code user install them.
        assert not {"tinyllava_hf", "modeling_tinyllava"} & set(get_imports(saved_model_dir / name)), name
    for name in ("modeling_tinyllava.py", "processing_tinyllava.py"):
        assert "from tinyllava_hf.assembly import" in (saved_model_dir / name).read_text()


def test_auto_classes_load_the_saved_model_with_identical_logits(tiny_model_and_processor, saved_model_dir):
    model, processor = tiny_model_and_processor
    inputs = _inputs(processor)
    assert isinstance(AutoConfig.from_pretrained(saved_model_dir), TinyLlavaConfig)
    assert isinstance(AutoModel.from_pretrained(saved_model_dir), TinyLlavaModel)
    assert isinstance(AutoModelForCausalLM.from_pretrained(saved_model_dir), TinyLlavaForConditionalGeneration)
    loaded = AutoModelForImageTextToText.from_pretrained(saved_model_dir)
    assert isinstance(loaded, TinyLlavaForConditionalGeneration)
    loaded_processor = AutoProcessor.from_pretrained(saved_model_dir)
    assert isinstance(loaded_processor, TinyLlavaProcessor)
    assert loaded_processor.num_image_tokens == processor.num_image_tokens
    assert torch.equal(loaded(**_inputs(loaded_processor)).logits, model(**inputs).logits)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_tinyllava"] = None  # the package must not be importable: only the Hub files may be used
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    path, reference = sys.argv[1], torch.load(sys.argv[2], weights_only=False)
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    inputs = processor.apply_chat_template(reference["messages"], add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], reference["input_ids"])
    assert torch.equal(model(**inputs).logits, reference["logits"]), "logits differ"
    pipe = pipeline("image-text-to-text", model=path, trust_remote_code=True)
    out = pipe(text=reference["messages"], max_new_tokens=3, return_full_text=False)
    print("GENERATED", repr(out[0]["generated_text"]))
    for obj in (model, processor, pipe.model, pipe.processor):
        print("MODULE_FILE", sys.modules[type(obj).__module__].__file__)
    sys.modules["tinyllava_hf"] = None  # without the tools, assembling a new model says what to install
    for cls in (type(model), type(processor)):
        try:
            cls.from_pretrained_components("llm", "vision_tower")
        except ImportError as error:
            assert "pip install tinyllava-hf" in str(error), error
        else:
            raise AssertionError(f"{cls.__name__}.from_pretrained_components ran without tinyllava_hf")
    """
)


def test_remote_code_loads_without_the_package_and_runs_the_pipeline(
    tiny_model_and_processor, saved_model_dir, tmp_path
):
    model, processor = tiny_model_and_processor
    messages = chat(image=make_image())
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    torch.save(
        {"messages": messages, "input_ids": inputs["input_ids"], "logits": model(**inputs).logits}, tmp_path / "ref.pt"
    )
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(saved_model_dir), str(tmp_path / "ref.pt")],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GENERATED" in result.stdout
    # The classes were defined by the checkpoint's files, copied into the HF modules cache, not by this repository.
    module_files = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("MODULE_FILE ")]
    assert len(module_files) == 4
    for module_file in module_files:
        assert Path(module_file).resolve().is_relative_to((tmp_path / "modules").resolve()), module_file


def test_pipeline_with_chat_messages_batched_with_and_without_images(varied_model_dir):
    pipe = pipeline("image-text-to-text", model=str(varied_model_dir))
    with_image = chat("What is shown in the image?", image=make_image())
    text_only = chat("What color is the square?")
    alone = [pipe(text=messages, max_new_tokens=4, return_full_text=False)[0] for messages in (with_image, text_only)]
    assert alone[0]["generated_text"] != alone[1]["generated_text"], "the prompts must give different answers"
    batched = pipe(text=[with_image, text_only, with_image], max_new_tokens=4, batch_size=3, return_full_text=False)
    assert [out[0]["generated_text"] for out in batched] == [
        alone[0]["generated_text"],
        alone[1]["generated_text"],
        alone[0]["generated_text"],
    ]
    full = pipe(text=with_image, max_new_tokens=2)[0]["generated_text"]
    assert full[-1]["role"] == "assistant"
