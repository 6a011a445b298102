"""Answer a question about an image with a TinyLLaVA ONNX export: ONNX Runtime and NumPy only, no PyTorch.

pip install onnxruntime transformers pillow
python onnx_runtime_example.py MODEL_DIR "What is shown in the image?" --image photo.jpg [--int8]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer


def load_sessions(model_dir: Path, int8: bool = False) -> dict[str, ort.InferenceSession]:
    suffix = "_int8" if int8 else ""
    names = ("vision_encoder", "embed_tokens", "decoder_model_merged")
    return {name: ort.InferenceSession(str(model_dir / "onnx" / f"{name}{suffix}.onnx")) for name in names}


def prepare_inputs(model_dir: Path, question: str, image: Image.Image | None = None):
    """Token ids `(1, seq)`, each `<image>` expanded to its placeholders, and pixel values `(1, 3, H, W)` or None."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    config = json.loads((model_dir / "processor_config.json").read_text())
    content = [{"type": "image"}] * (image is not None) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if image is None:
        return np.array([tokenizer(prompt).input_ids]), None
    before, _, after = prompt.partition(config["image_token"])
    placeholders = [tokenizer.convert_tokens_to_ids(config["image_token"])] * config["num_image_tokens"]
    if config.get("chunked_image_tokenization"):  # the original tokenized the text after an image on its own
        ids = tokenizer(before).input_ids + placeholders + tokenizer(after, add_special_tokens=False).input_ids
    else:
        ids = tokenizer(before + config["image_token"] * config["num_image_tokens"] + after).input_ids
    image = image.convert("RGB")
    image_processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=False)
    if config.get("image_aspect_ratio") == "pad":  # centre on a square of the mean colour, as the original did
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in image_processor.image_mean))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    return np.array([ids]), image_processor(image, return_tensors="np")["pixel_values"].astype(np.float32)


def generate(sessions, input_ids, pixel_values, image_token_id: int, eos_token_ids, max_new_tokens=32) -> list[int]:
    """Greedy decoding with the key/value cache; returns the new token ids (ending with EOS if one was generated)."""
    embed, decoder = sessions["embed_tokens"], sessions["decoder_model_merged"]
    embeds = embed.run(None, {"input_ids": input_ids})[0]
    if pixel_values is not None:
        features = sessions["vision_encoder"].run(None, {"pixel_values": pixel_values})[0]
        embeds[input_ids == image_token_id] = features.reshape(-1, embeds.shape[-1])
    # An empty cache: (batch, kv_heads, 0, head_dim) for every layer, the sizes read from the graph's inputs.
    past = {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in decoder.get_inputs()
        if i.name.startswith("past_key_values.")
    }
    positions, tokens = np.arange(input_ids.shape[1])[None], []
    while len(tokens) < max_new_tokens:
        mask = np.ones((1, positions[0, -1] + 1), np.int64)
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **past}
        logits, *present = decoder.run(None, feeds)
        tokens.append(int(logits[0, -1].argmax()))
        if tokens[-1] in eos_token_ids:
            break
        past = dict(zip(past, present))  # present.{i}.key/value come out in the order past_key_values go in
        embeds = embed.run(None, {"input_ids": np.array([[tokens[-1]]])})[0]
        positions = positions[:, -1:] + 1
    return tokens


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("question")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--int8", action="store_true", help="use the dynamically quantized *_int8.onnx files")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    image = Image.open(args.image) if args.image else None
    input_ids, pixel_values = prepare_inputs(args.model_dir, args.question, image)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, trust_remote_code=False)
    eos = json.loads((args.model_dir / "generation_config.json").read_text()).get("eos_token_id")
    eos_token_ids = set(eos if isinstance(eos, list) else [eos])
    image_token = json.loads((args.model_dir / "processor_config.json").read_text())["image_token"]
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    sessions = load_sessions(args.model_dir, args.int8)
    tokens = generate(sessions, input_ids, pixel_values, image_token_id, eos_token_ids, args.max_new_tokens)
    print(tokenizer.decode(tokens, skip_special_tokens=True).strip())


if __name__ == "__main__":
    main()
