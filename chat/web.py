"""`tinyllava-chat MODEL`: the Gradio web app.

One page per browser tab, each with its own conversation; the model is loaded once and shared. Answers stream into
the chat as they are generated. The app also serves `/answer`, a single-turn greedy answer for scripts:

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("cat.png"), "What is this?", api_name="/answer")
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

# Set before gradio is imported: it reads the variable at import time, and the app must never call home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from PIL import Image

from .examples import Example
from .images import open_image
from .session import ChatInputError, ChatModel, Conversation, GenerationSettings

logger = logging.getLogger(__name__)

ERROR_PREFIX = "Error: "
# Images in the chat at a readable size: small training images (the demo's are 32 px) would otherwise be specks.
CSS = "#chatbot .image-frame img { width: 192px; height: 192px; object-fit: contain; image-rendering: pixelated; }"
EMPTY_IMAGE_ONLY = "Image attached: now ask a question about it."


@dataclass
class TabState:
    """What one browser tab holds: its conversation, and an image attached but not yet asked about."""

    conversation: Conversation = field(default_factory=Conversation)
    pending_image: Image.Image | None = None


def file_message(path: str) -> dict:
    return {"role": "user", "content": {"path": path}}


def text_message(role: str, text: str) -> dict:
    return {"role": role, "content": text}


class ChatApp:
    """The event handlers of the page, around one shared `ChatModel`."""

    def __init__(self, chat_model: ChatModel, settings: GenerationSettings):
        self.chat_model = chat_model
        self.settings = settings

    def respond(self, message: dict, history: list, state: TabState, max_new_tokens, temperature, top_p):
        """Handles one submission of the input box (text and/or an attached file), streaming the answer.

        Yields:
            `(chat history, input box update, tab state)` after each change.
        """
        text, files = (message or {}).get("text", "").strip(), (message or {}).get("files", [])
        if not text and not files:
            yield history, gr.skip(), state
            return
        history = list(history)
        busy = gr.MultimodalTextbox(value=None, interactive=False)
        done = gr.MultimodalTextbox(interactive=True)
        for path in files:
            history.append(file_message(path))
        if text:
            history.append(text_message("user", text))
        yield history, busy, state  # the submission moves into the chat, and the box is locked until the answer
        try:
            for path in files:
                state.pending_image = open_image(path, name=Path(path).name)
            if not text:
                yield [*history, text_message("assistant", EMPTY_IMAGE_ONLY)], done, state
                return
            settings = GenerationSettings(int(max_new_tokens), float(temperature), float(top_p))
            prompt = state.conversation.next_prompt(text, state.pending_image)
            yield [*history, text_message("assistant", "")], busy, state
            answer = ""
            for answer in self.chat_model.stream(prompt, settings):
                yield [*history, text_message("assistant", answer)], busy, state
        except ChatInputError as error:
            yield [*history, text_message("assistant", ERROR_PREFIX + str(error))], done, state
            return
        except Exception as error:  # a failed generation must not leave the input box locked
            logger.exception("Generation failed")
            failure = f"{ERROR_PREFIX}generation failed ({type(error).__name__}: {error}); see the server log."
            yield [*history, text_message("assistant", failure)], done, state
            return
        state.conversation.record(prompt, answer)
        state.pending_image = None
        yield [*history, text_message("assistant", answer)], done, state

    def reset(self):
        """A new conversation: empty chat, empty input box, nothing attached."""
        return [], gr.MultimodalTextbox(value=None, interactive=True), TabState()

    def answer(self, image: str | None, question: str) -> str:
        """The `/answer` API: the complete greedy answer to `question` about the image file, in a new conversation."""
        try:
            pil_image = open_image(image, name=Path(image).name) if image else None
            return self.chat_model.answer(pil_image, question, GenerationSettings(self.settings.max_new_tokens))
        except ChatInputError as error:
            raise gr.Error(str(error)) from None


def build_app(
    chat_model: ChatModel, model_name: str, settings: GenerationSettings, examples: list[Example]
) -> gr.Blocks:
    """The page: chat, input box with an upload button, reset, generation settings and examples."""
    app = ChatApp(chat_model, settings)
    max_tokens_limit = max(settings.max_new_tokens, min(chat_model.context_length or 2048, 4096))
    with gr.Blocks(title=f"TinyLLaVA chat: {model_name}", analytics_enabled=False) as blocks:
        gr.Markdown(
            f"## TinyLLaVA chat\n`{model_name}`. Attach an image, ask about it, and keep the conversation going."
        )
        state = gr.State(TabState())
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="chatbot", label="Conversation", height=620, buttons=["copy"])
                # Any file is accepted here, so that a wrong one gets an explanation in the chat, not a browser refusal.
                textbox = gr.MultimodalTextbox(
                    elem_id="chat-input",
                    show_label=False,
                    placeholder="Attach an image with the clip button, ask a question about it, press Enter",
                    file_count="single",
                )
                if examples:
                    gr.Examples(
                        examples=[[{"text": example.question, "files": [str(example.image)]}] for example in examples],
                        inputs=[textbox],
                        label="Examples: held-out questions from the demo's data",
                    )
            with gr.Column(scale=1):
                reset = gr.Button("Reset conversation", elem_id="reset", variant="secondary")
                with gr.Accordion("Generation", open=True):
                    max_new_tokens = gr.Slider(
                        1, max_tokens_limit, value=settings.max_new_tokens, step=1, label="Max new tokens"
                    )
                    temperature = gr.Slider(
                        0, 2, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)"
                    )
                    top_p = gr.Slider(0.05, 1, value=settings.top_p, step=0.05, label="Top-p (when sampling)")
        textbox.submit(
            app.respond,
            inputs=[textbox, chatbot, state, max_new_tokens, temperature, top_p],
            outputs=[chatbot, textbox, state],
            api_visibility="private",
            concurrency_id="model",
        )
        reset.click(app.reset, outputs=[chatbot, textbox, state], api_visibility="private")
        # The chat's own trash button clears the display; the conversation behind it must go too.
        chatbot.clear(app.reset, outputs=[chatbot, textbox, state], api_visibility="private")
        # The API endpoint's inputs and output are hidden components: it has no place on the page.
        api_image = gr.File(visible=False, type="filepath", label="image")
        api_question = gr.Textbox(visible=False, label="question")
        api_answer = gr.Textbox(visible=False, label="answer")
        gr.Button(visible=False).click(
            app.answer, inputs=[api_image, api_question], outputs=api_answer, api_name="answer", concurrency_id="model"
        )
    return blocks


def serve(
    chat_model: ChatModel,
    model_name: str,
    settings: GenerationSettings,
    examples: list[Example],
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
):
    """Builds and launches the app; returns the launched `gr.Blocks` (block=False leaves the server running in a
    background thread; call `.close()` to stop it)."""
    blocks = build_app(chat_model, model_name, settings, examples)
    blocks.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        ssr_mode=False,  # server-side rendering needs Node.js; the page renders in the browser instead
        allowed_paths=sorted({str(example.image.parent) for example in examples}),
        footer_links=["api"],
        css=CSS,
    )
    return blocks
