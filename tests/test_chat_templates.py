"""Chat-template names resolve in one place, with the same meaning for training, conversion and the processor."""

import re
import shutil

import pytest
import yaml
from transformers import AutoConfig, AutoTokenizer, SiglipImageProcessorPil
from transformers.utils.chat_template_utils import render_jinja_template
from trl import SFTConfig

from modeling_tinyllava import TinyLlavaConfig, TinyLlavaProcessor
from tinyllava_hf.assembly import add_image_token
from tinyllava_hf.chat_templates import (
    BUILTIN_TEMPLATE_NAMES,
    CHAT_TEMPLATES,
    SYSTEM_PROMPT,
    chat_template_name,
    resolve_chat_template,
    with_image_parts,
)
from tinyllava_hf.conversion.errors import ConversionError
from tinyllava_hf.conversion.processor import build_processor
from tinyllava_hf.training.arguments import ModelArguments
from tinyllava_hf.training.cli import RECIPES_DIR
from tinyllava_hf.training.train import load_processor

LLM_OWN_TEMPLATE = "{% for message in messages %}<<{{ message['role'] }}>>{% endfor %}"
MESSAGES = [{"role": "user", "content": "<image>\nHi"}, {"role": "assistant", "content": "Hello."}]


@pytest.fixture(scope="module")
def llm_with_template(components_dir, tmp_path_factory):
    """The tiny llama LLM, its tokenizer carrying a chat template of its own."""
    path = tmp_path_factory.mktemp("llm_with_template") / "llama"
    shutil.copytree(components_dir / "llama", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = LLM_OWN_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def test_builtin_templates_ship_as_jinja_files_and_render_the_original_format():
    assert set(CHAT_TEMPLATES) == set(BUILTIN_TEMPLATE_NAMES)
    for name in BUILTIN_TEMPLATE_NAMES:
        assert resolve_chat_template(name) == CHAT_TEMPLATES[name]
    (rendered,), _ = render_jinja_template([MESSAGES], chat_template=CHAT_TEMPLATES["llama"])
    assert rendered == f"{SYSTEM_PROMPT} USER: <image>\nHi ASSISTANT: Hello.</s>"


def test_new_models_default_to_the_llms_own_template_and_original_keeps_the_papers(llm_with_template):
    """The default rule of README "Which chat template": the LLM's own when it has one (issue 16's measurement),
    and "original" (the paper's recipes, converted checkpoints) is the family template even then."""
    tokenizer = AutoTokenizer.from_pretrained(llm_with_template)
    assert resolve_chat_template(None, tokenizer, "llama") == with_image_parts(LLM_OWN_TEMPLATE)
    assert resolve_chat_template("original", tokenizer, "llama") == CHAT_TEMPLATES["llama"]
    with pytest.raises(ValueError, match="'original' depends on the LLM family"):
        resolve_chat_template("original", tokenizer)


def test_none_without_an_llm_template_is_the_family_default_or_stays_none(components_dir):
    tokenizer = AutoTokenizer.from_pretrained(components_dir / "qwen2")
    assert resolve_chat_template(None, tokenizer) is None  # the caller keeps its processor's template
    assert resolve_chat_template(None, tokenizer, "qwen2") == CHAT_TEMPLATES["qwen2_base"]
    assert resolve_chat_template(None, tokenizer, "stablelm") == CHAT_TEMPLATES["phi"]
    tokenizer.eos_token = "<|im_end|>"
    assert resolve_chat_template(None, tokenizer, "qwen2") == CHAT_TEMPLATES["qwen2_instruct"]
    with pytest.raises(ValueError, match="No default chat template for LLM family 'mistral'"):
        resolve_chat_template(None, tokenizer, "mistral")


def test_llm_is_the_tokenizers_own_template(llm_with_template, components_dir):
    tokenizer = AutoTokenizer.from_pretrained(llm_with_template)
    assert resolve_chat_template("llm", tokenizer) == with_image_parts(LLM_OWN_TEMPLATE)
    without = AutoTokenizer.from_pretrained(components_dir / "llama")
    with pytest.raises(ValueError, match="'llm' uses the LLM tokenizer's own template, but .* has none"):
        resolve_chat_template("llm", without)


def test_jinja_file_jinja_string_and_unknown_names(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(LLM_OWN_TEMPLATE)
    assert resolve_chat_template(str(path)) == LLM_OWN_TEMPLATE
    assert resolve_chat_template(path) == LLM_OWN_TEMPLATE
    assert resolve_chat_template(LLM_OWN_TEMPLATE) == LLM_OWN_TEMPLATE
    with pytest.raises(ValueError, match=r"Unknown chat template 'vicuna'; expected one of phi, .*'llm'"):
        resolve_chat_template("vicuna")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_chat_template(str(tmp_path / "missing.jinja"))


def test_reverse_lookup_names_builtin_templates():
    # phi and qwen2_base render the same text in the original; the LLM family decides between them.
    for name in BUILTIN_TEMPLATE_NAMES:
        assert chat_template_name(CHAT_TEMPLATES[name] + "\n", "qwen2" if name == "qwen2_base" else "llama") == name
    assert chat_template_name(CHAT_TEMPLATES["phi"], "qwen2") == "qwen2_base"
    assert chat_template_name(LLM_OWN_TEMPLATE, "llama") == "custom"
    assert chat_template_name("{% if %}", "llama") == "custom"


def test_reverse_lookup_recognises_older_spellings_of_a_template():
    # Checkpoints saved before the templates became commented .jinja files hold the same template spelled differently.
    respelled = re.sub(r"\{#.*?#\}", "", CHAT_TEMPLATES["llama"], flags=re.DOTALL)
    assert respelled != CHAT_TEMPLATES["llama"]
    assert chat_template_name(respelled, "llama") == "llama"
    assert chat_template_name(respelled.replace("ASSISTANT:", "BOT:"), "llama") == "custom"


def test_processor_from_components_resolves_every_kind(components_dir, llm_with_template, tmp_path):
    def processor(llm, chat_template):
        return TinyLlavaProcessor.from_pretrained_components(
            llm=str(llm), vision_tower=str(components_dir / "siglip"), chat_template=chat_template
        )

    assert processor(components_dir / "gemma", None).chat_template == CHAT_TEMPLATES["gemma"]
    assert processor(components_dir / "gemma", "pretrain").chat_template == CHAT_TEMPLATES["pretrain"]
    assert processor(llm_with_template, "llm").chat_template == with_image_parts(LLM_OWN_TEMPLATE)
    assert processor(llm_with_template, None).chat_template == with_image_parts(LLM_OWN_TEMPLATE)
    assert processor(llm_with_template, "original").chat_template == CHAT_TEMPLATES["llama"]
    path = tmp_path / "mine.jinja"
    path.write_text(LLM_OWN_TEMPLATE)
    assert processor(components_dir / "gemma", str(path)).chat_template == LLM_OWN_TEMPLATE
    with pytest.raises(ValueError, match="Unknown chat template 'vicuna'"):
        processor(components_dir / "gemma", "vicuna")


def test_conversion_resolves_the_same_names(llm_with_template, components_dir):
    tokenizer = add_image_token(AutoTokenizer.from_pretrained(llm_with_template), "llama")
    config = TinyLlavaConfig(
        text_config=AutoConfig.from_pretrained(components_dir / "llama"),
        vision_config=AutoConfig.from_pretrained(components_dir / "siglip"),
    )
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})

    def build(chat_template):
        return build_processor(tokenizer, image_processor, config, "square", chat_template).chat_template

    assert build(None) == CHAT_TEMPLATES["llama"]  # the original's, although this tokenizer has its own template
    assert build("qwen2_instruct") == CHAT_TEMPLATES["qwen2_instruct"]
    assert build("llm") == with_image_parts(LLM_OWN_TEMPLATE)
    with pytest.raises(ConversionError, match="--chat-template: Unknown chat template 'vicuna'"):
        build("vicuna")


def test_training_accepts_llm(llm_with_template, components_dir, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), max_length=128, report_to=[], bf16=False, use_cpu=True)
    model_args = ModelArguments(
        llm=str(llm_with_template), vision_tower=str(components_dir / "siglip"), chat_template="llm"
    )
    processor = load_processor(model_args, args)
    assert processor.chat_template == with_image_parts(LLM_OWN_TEMPLATE)
    model_args.chat_template = "vicuna"
    with pytest.raises(ValueError, match="Unknown chat template 'vicuna'"):
        load_processor(model_args, args)
    # A checkpoint's tokenizer carries the processor's template, not the LLM's: "llm" cannot mean the LLM's there.
    processor.save_pretrained(tmp_path / "checkpoint")
    checkpoint_args = ModelArguments(model_name_or_path=str(tmp_path / "checkpoint"), chat_template="llm")
    with pytest.raises(ValueError, match="does not keep apart: omit --chat_template"):
        load_processor(checkpoint_args, args)


def test_pretrain_recipe_keeps_the_original_template_for_a_new_model(llm_with_template, components_dir, tmp_path):
    """Stage 1 renders captions; the model keeps --conversation_template, which the paper's recipe sets to
    'original' (even for an LLM with its own template); 'llm' keeps the LLM's own."""
    recipe = yaml.safe_load((RECIPES_DIR / "pretrain.yaml").read_text())
    assert recipe["chat_template"] == "pretrain" and recipe["conversation_template"] == "original"
    args = SFTConfig(output_dir=str(tmp_path), max_length=128, report_to=[], bf16=False, use_cpu=True)
    new_model = {"llm": str(llm_with_template), "vision_tower": str(components_dir / "siglip")}
    for kept, expected in (("original", CHAT_TEMPLATES["llama"]), ("llm", with_image_parts(LLM_OWN_TEMPLATE))):
        model_args = ModelArguments(**new_model, chat_template="pretrain", conversation_template=kept)
        assert load_processor(model_args, args).chat_template == expected
    with pytest.raises(ValueError, match="--conversation_template names the template a NEW model keeps"):
        load_processor(ModelArguments(**new_model, chat_template="llama", conversation_template="llm"), args)
