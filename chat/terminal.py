"""`tinyllava-chat MODEL --cli`: the conversation in a terminal, or over piped standard input.

Answers stream to standard output as they are generated, each on its own line; everything else (the prompt, notes,
error messages) goes to standard error, so `... --cli > answers.txt` keeps just the answers.
"""

import sys
from typing import TextIO

from .images import open_image
from .session import ChatInputError, ChatModel, Conversation, GenerationSettings

HELP = (
    "Type a question and press Enter. Commands: /image PATH attaches an image to the next question (a new image "
    "starts a new conversation), /reset starts over, /exit quits."
)


class TerminalChat:
    """One conversation read line by line from `stdin`.

    Args:
        chat_model: the loaded model.
        settings: generation settings for every answer.
        stdin, stdout, stderr: the streams (the process's by default).
    """

    def __init__(
        self,
        chat_model: ChatModel,
        settings: GenerationSettings,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ):
        self.chat_model = chat_model
        self.settings = settings
        self.stdin, self.stdout, self.stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
        self.conversation = Conversation()
        self.pending_image = None  # (name, image) attached to the next question

    def note(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    def read_line(self) -> str | None:
        """The next input line without its newline; None at the end of input."""
        if self.stdin is sys.stdin and sys.stdin.isatty():
            import readline  # noqa: F401  (line editing and history for input())

            self.stderr.write("you> ")
            self.stderr.flush()
            try:
                return input()
            except EOFError:
                self.stderr.write("\n")
                return None
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def attach(self, path: str) -> None:
        if not path:
            self.note("Usage: /image PATH")
            return
        image = open_image(path)
        self.pending_image = (path, image)
        note = " (a new image starts a new conversation)" if self.conversation.messages else ""
        self.note(f"[image {path} attached to the next question{note}]")

    def ask(self, question: str) -> None:
        image = self.pending_image[1] if self.pending_image else None
        prompt = self.conversation.next_prompt(question, image)
        stream = self.chat_model.stream(prompt, self.settings)
        answer = next(stream, "")  # a ChatInputError comes before any text, so nothing half-printed is left
        self.stderr.write("assistant> ")
        self.stderr.flush()
        self.stdout.write(answer)
        self.stdout.flush()
        for answer_so_far in stream:
            # The text only grows, except that the final decode of all tokens at once may change earlier text.
            new_text = answer_so_far[len(answer) :] if answer_so_far.startswith(answer) else "\n" + answer_so_far
            self.stdout.write(new_text)
            self.stdout.flush()
            answer = answer_so_far
        self.stdout.write("\n")
        self.stdout.flush()
        self.conversation.record(prompt, answer)
        self.pending_image = None

    def handle(self, line: str) -> bool:
        """Acts on one input line; returns False when the chat should end."""
        command, _, argument = line.strip().partition(" ")
        if command == "/exit":
            return False
        if command == "/reset":
            self.conversation.reset()
            self.pending_image = None
            self.note("[conversation reset]")
        elif command == "/image":
            self.attach(argument.strip())
        elif command.startswith("/"):
            self.note(f"Unknown command {command}. {HELP}")
        elif line.strip():
            self.ask(line.strip())
        return True

    def run(self) -> int:
        """Chats until `/exit` or the end of input; returns the exit status (0)."""
        self.note(HELP)
        while (line := self.read_line()) is not None:
            try:
                if not self.handle(line):
                    break
            except ChatInputError as error:
                self.note(f"Error: {error}")
        return 0
