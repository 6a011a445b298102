"""llama.cpp's side of `benchmarks.llamacpp`, importable without torch so that its peak RSS is llama.cpp's own.

python -m benchmarks.llamacpp_side LM.gguf MMPROJ.gguf IMAGE.png '[ids]'   # prints peak RSS as JSON
"""

import ctypes
import json
import sys

import numpy as np

NUM_THREADS = 2


class LlamaCppSide:
    """One GGUF in llama.cpp (llama-cpp-python's low-level API), with libmtmd for the image."""

    def __init__(self, lm_path, mmproj_path):
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self.llama_cpp, self.mtmd = llama_cpp, mtmd_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(lm_path), n_ctx=1024, n_batch=512, n_threads=NUM_THREADS, n_threads_batch=NUM_THREADS,
            verbose=False,
        )  # fmt: skip
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = False, NUM_THREADS, False
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj_path).encode(), self.llm.model, params)

    def encode(self, image) -> None:
        mtmd = self.mtmd
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        bitmap = mtmd.mtmd_bitmap_init(
            image.width, image.height, (ctypes.c_uint8 * pixels.size).from_buffer_copy(pixels.tobytes())
        )
        chunks = mtmd.mtmd_input_chunks_init()
        text = mtmd.mtmd_input_text()
        text.text, text.add_special, text.parse_special = mtmd.mtmd_default_marker(), False, True
        text.text_len = len(text.text)
        mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                mtmd.mtmd_encode_chunk(self.ctx, chunk)
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)

    def last_logits(self) -> np.ndarray:
        """The last position's logits (`Llama.scores` holds them only with `logits_all`, which would make prefill
        compute the LM head at every position)."""
        pointer = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).copy()

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return self.last_logits()

    def decode(self, ids: list[int], steps: int) -> list[int]:
        logits = self.prefill(ids)
        tokens = []
        for _ in range(steps):
            tokens.append(int(np.argmax(logits)))
            self.llm.eval([tokens[-1]])
            logits = self.last_logits()
        return tokens


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM). Not `ru_maxrss`, which Linux carries over from the parent."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


if __name__ == "__main__":
    from PIL import Image

    lm, mmproj, image_path, ids = sys.argv[1:]
    base = peak_rss_mb()
    side = LlamaCppSide(lm, mmproj)
    side.encode(Image.open(image_path))
    side.decode(json.loads(ids), 8)
    print(json.dumps({"after_imports_mb": base, "peak_mb": peak_rss_mb()}))
