"""`--chat_template llm` end to end: a new model built from an LLM whose tokenizer has its own (ChatML) template
trains with it, saves it with the processor, and inference on the checkpoint (processor, pipeline, chat app) renders
with that same template."""

import json
import math
import shutil
from pathlib import Path

from conftest import chat, make_image
from training_helpers import train_argv, write_llava_dataset
from transformers import AutoProcessor, AutoTokenizer, pipeline

from tinyllava_hf.chat.session import ChatModel
from tinyllava_hf.chat_templates import with_image_parts
from tinyllava_hf.training.cli import run

SMOLLM2_TEMPLATE = (Path(__file__).parent / "fixtures" / "chat_templates" / "smollm2_instruct.jinja").read_text()


def chatml_llm(components_dir: Path, root: Path) -> Path:
    """The tiny Llama of `components_dir` with SmolLM2's ChatML template in its tokenizer (`<|im_end|>` is special)."""
    llm = root / "chatml_llm"
    shutil.copytree(components_dir / "llama", llm)
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    tokenizer.save_pretrained(llm)
    return llm


def test_llm_template_trains_is_saved_and_is_used_for_inference(components_dir, tmp_path):
    llm = chatml_llm(components_dir, tmp_path)
    data = write_llava_dataset(tmp_path)
    new_model = ["--llm", str(llm), "--vision_tower", str(components_dir / "siglip"), "--chat_template", "llm"]
    output_dir = run(train_argv("finetune", tmp_path / "out", data, *new_model, "--learning_rate", "3e-3"))

    state = json.loads((output_dir / "trainer_state.json").read_text())
    loss = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(loss) == 3 and all(math.isfinite(x) for x in loss) and loss[-1] < loss[0], loss
    assert (output_dir / "chat_template.jinja").read_text() == with_image_parts(SMOLLM2_TEMPLATE)
    processor = AutoProcessor.from_pretrained(output_dir, trust_remote_code=True)
    prompt = processor.apply_chat_template(
        chat("What is in the image?", image=make_image()), add_generation_prompt=True
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=prompt, images=make_image(), return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == processor.num_image_tokens
    pipe = pipeline("image-text-to-text", model=str(output_dir), trust_remote_code=True)
    out = pipe(text=chat("What is in the image?", image=make_image()), max_new_tokens=2, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)
    # The chat app (tinyllava-chat) loads the checkpoint and renders a two-turn conversation with the same template.
    history = chat("What is in the image?", image=make_image(), answer="A red square.")
    history.append({"role": "user", "content": [{"type": "text", "text": "And its colour?"}]})
    inputs, _ = ChatModel.load(str(output_dir), device="cpu").prepare_inputs(history, max_new_tokens=2)
    assert processor.decode(inputs["input_ids"][0]).endswith(
        "<|im_start|>assistant\nA red square.<|im_end|>\n<|im_start|>user\nAnd its colour?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
