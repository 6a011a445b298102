"""Driving exported GGUF files through llama.cpp itself (llama-cpp-python's bindings), for the GGUF tests."""

import base64
import ctypes
import io

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="the GGUF tests need llama-cpp-python: pip install -e '.[gguf]'")
from llama_cpp import mtmd_cpp
from llama_cpp.llama_chat_format import MTMDChatHandler


def load(path, **kwargs) -> "llama_cpp.Llama":
    """A CPU llama.cpp context for a language-model GGUF, keeping the logits of every position."""
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False, seed=0, **kwargs
    )


def greedy(llm, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int) -> list[int]:
    """Greedy decoding by argmax of llama.cpp's logits, stopping after `eos_token_id` like `model.generate`."""
    llm.reset()
    llm.eval(prompt_ids)
    new = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        new.append(token)
        if token == eos_token_id:
            break
        llm.eval([token])
    return new


def image_embeddings(llm, mmproj_path, image) -> np.ndarray:
    """What libmtmd feeds the LM for one image: `(num_image_tokens, hidden)`, from its own preprocessing."""
    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 2
    params.print_timings = False
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj_path).encode(), llm.model, params)
    assert ctx is not None, f"libmtmd could not load {mmproj_path}"
    try:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        buffer = (ctypes.c_uint8 * pixels.size).from_buffer_copy(pixels.tobytes())
        bitmap = mtmd_cpp.mtmd_bitmap_init(image.width, image.height, buffer)
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        text = mtmd_cpp.mtmd_input_text()
        text.text = mtmd_cpp.mtmd_default_marker()
        text.text_len = len(text.text)
        text.add_special = False
        text.parse_special = True
        bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        for index in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, index)
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                assert mtmd_cpp.mtmd_encode_chunk(ctx, chunk) == 0
                num_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                output = mtmd_cpp.mtmd_get_output_embd(ctx)
                hidden = llm.n_embd()
                embeddings = np.ctypeslib.as_array(output, shape=(num_tokens * hidden,)).reshape(num_tokens, hidden)
                embeddings = embeddings.copy()
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
        return embeddings
    finally:
        mtmd_cpp.mtmd_free(ctx)


def data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_answer(llm, image, question: str, max_tokens: int = 6) -> str:
    """One greedy answer through llama-cpp-python's chat API, with the chat template stored in the GGUF."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(image)}},
                {"type": "text", "text": question},
            ],
        }
    ]
    output = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
    return output["choices"][0]["message"]["content"].strip()


def chat_model(lm_path, mmproj_path) -> "llama_cpp.Llama":
    return llama_cpp.Llama(
        model_path=str(lm_path),
        chat_handler=MTMDChatHandler(clip_model_path=str(mmproj_path), verbose=False, use_gpu=False),
        n_ctx=512,
        n_threads=2,
        verbose=False,
        seed=0,
    )
