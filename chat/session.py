"""The model side of a chat: one checkpoint loaded once, conversations about an image, streamed answers.

Prompts are built by the checkpoint's own processor chat template, so the chat sees exactly the text the model was
trained on. Answers are streamed with transformers' `TextIteratorStreamer` while `generate` runs in a thread.
"""

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, StoppingCriteria, TextIteratorStreamer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ChatInputError(ValueError):
    """A problem with what the user asked or attached; the message is written for the user and the chat goes on."""


@dataclass(frozen=True)
class GenerationSettings:
    """How an answer is generated.

    Args:
        max_new_tokens: the most tokens an answer may have (fewer if the model's context ends first).
        temperature: 0 decodes greedily (deterministic); above 0 samples with this temperature.
        top_p: nucleus sampling mass, used only when sampling.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")

    def generate_kwargs(self) -> dict:
        """`generate` arguments; sampling arguments are left out of greedy decoding, which ignores them."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


GREEDY = GenerationSettings()


def user_message(question: str, image: Image.Image | None) -> dict:
    """A user turn in the processor's chat format, the image (if any) before the text."""
    content = [{"type": "image", "image": image}] if image is not None else []
    return {"role": "user", "content": [*content, {"type": "text", "text": question}]}


def assistant_message(answer: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


@dataclass
class Conversation:
    """The turns of one chat, in the processor's chat format.

    A conversation is about one image, as TinyLLaVA's training conversations (LLaVA-1.5 data) and the original
    TinyLLaVA demo are: attaching a new image starts a new conversation about it.
    """

    messages: list[dict] = field(default_factory=list)

    def next_prompt(self, question: str, image: Image.Image | None) -> list[dict]:
        """The messages the model sees for `question`: the history (none if `image` starts a new conversation)
        followed by the new user turn."""
        history = [] if image is not None else self.messages
        return [*history, user_message(question, image)]

    def record(self, prompt: list[dict], answer: str) -> None:
        """Makes `prompt` (from `next_prompt`) and its answer the conversation so far."""
        self.messages = [*prompt, assistant_message(answer)]

    def reset(self) -> None:
        self.messages = []

    @property
    def num_turns(self) -> int:
        return sum(message["role"] == "assistant" for message in self.messages)


class _StopWhenSet(StoppingCriteria):
    """Stops `generate` once `event` is set: the reader went away (a closed browser tab, a stopped stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ChatModel:
    """A checkpoint and its processor, loaded once and shared by every conversation.

    Args:
        model: an image-text-to-text model (`TinyLlavaForConditionalGeneration`, or transformers' LLaVA after
            `tinyllava-convert to-llava`), in eval mode.
        processor: its processor, whose chat template builds the prompts.
    """

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.image_token = getattr(processor, "image_token", "<image>")
        self.context_length = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        # `generate` is not re-entrant on one model: the web app may serve several browser tabs at once.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_id: str, device: str = "auto", dtype: str = "auto") -> "ChatModel":
        """Loads a Hub id or a local checkpoint directory (offline when `HF_HUB_OFFLINE=1`).

        Args:
            model_id: what `from_pretrained` accepts.
            device: `"auto"` (CUDA if available, else CPU), or a torch device string.
            dtype: `"auto"` (the checkpoint's dtype) or a name in `DTYPES`.

        Raises:
            OSError: if `model_id` holds no loadable checkpoint; the message names it.
        """
        import modeling_tinyllava  # noqa: F401  (registers TinyLLaVA with the Auto classes: no remote code needed)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
        try:
            processor = AutoProcessor.from_pretrained(model_id)
            model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=torch_dtype)
        except (OSError, ValueError) as error:
            raise OSError(f"Could not load a chat model from {model_id!r}: {error}") from error
        return cls(model.to(device).eval(), processor)

    def prepare_inputs(self, messages: list[dict], max_new_tokens: int) -> tuple[dict, int]:
        """Model inputs for `messages` with a generation prompt, and the number of new tokens that fit.

        Raises:
            ChatInputError: if the chat template wants more images than the conversation has (e.g. a pretraining
                checkpoint, whose template puts an image in every turn), or the prompt fills the model's context.
        """
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        wanted = prompt.count(self.image_token)
        attached = sum(part["type"] == "image" for message in messages for part in message["content"])
        if wanted > attached:
            raise ChatInputError(
                f"This model needs an image for this question: its chat template expects {wanted} image(s) in the "
                f"conversation, and {attached} is attached. Attach an image and ask again."
            )
        if wanted < attached:
            raise ChatInputError(
                f"This model's chat template has room for {wanted} image(s) in the conversation, and {attached} "
                "are attached: ask without an image."
            )
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self.model.device)
        prompt_length = inputs["input_ids"].shape[1]
        if self.context_length is not None:
            room = self.context_length - prompt_length
            if room < 1:
                raise ChatInputError(
                    f"The conversation is {prompt_length} tokens long and this model reads at most "
                    f"{self.context_length}: reset it to go on."
                )
            if room < max_new_tokens:
                logger.info("max_new_tokens %d capped to %d by the model's context.", max_new_tokens, room)
                max_new_tokens = room
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs, max_new_tokens

    def stream(self, messages: list[dict], settings: GenerationSettings = GREEDY) -> Iterator[str]:
        """Generates the answer to the last user turn of `messages`, yielding the answer so far as it grows.

        The last value yielded is the complete answer, decoded from all generated tokens at once (exactly what
        `processor.decode(generate(...)[prompt_length:], skip_special_tokens=True)` gives), stripped of
        surrounding whitespace. Closing the iterator early stops generation.

        Raises:
            ChatInputError: see `prepare_inputs`; raised before anything is yielded.
        """
        inputs, max_new_tokens = self.prepare_inputs(messages, settings.max_new_tokens)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        result: dict = {}

        def run():
            try:
                with self._lock, torch.no_grad():
                    result["ids"] = self.model.generate(
                        **inputs,
                        **settings.generate_kwargs(),
                        max_new_tokens=max_new_tokens,
                        streamer=streamer,
                        stopping_criteria=[_StopWhenSet(stop)],
                    )
            except Exception as error:  # noqa: BLE001  (any failure is re-raised in the reading thread below)
                result["error"] = error
                streamer.end()  # unblocks the reader, which would otherwise wait for text forever

        thread = threading.Thread(target=run, name="tinyllava-chat-generate", daemon=True)
        thread.start()
        try:
            text = ""
            for piece in streamer:
                text += piece
                if text.strip():
                    yield text.strip()
        finally:
            stop.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        new_tokens = result["ids"][0, inputs["input_ids"].shape[1] :]
        yield self.processor.decode(new_tokens, skip_special_tokens=True).strip()

    def answer(self, image: Image.Image | None, question: str, settings: GenerationSettings = GREEDY) -> str:
        """The complete answer to one question about `image`, in a new conversation (greedy by default)."""
        answer = ""
        for answer in self.stream(Conversation().next_prompt(question, image), settings):
            pass
        return answer
