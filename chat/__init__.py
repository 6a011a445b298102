"""`tinyllava-chat`: talk to a checkpoint in a local Gradio web app or in the terminal.

`session` holds the model side (loading once, conversations, streamed generation), `web` the Gradio page,
`terminal` the command-line chat, `browser` a headless-Chromium driver for the page (tests, screenshots).
"""

from .session import ChatInputError, ChatModel, Conversation, GenerationSettings

__all__ = ["ChatInputError", "ChatModel", "Conversation", "GenerationSettings"]
