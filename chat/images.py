"""Reading the image a user attaches, with a message they can act on when it is not one."""

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .session import ChatInputError


def open_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """Decodes the image file at `path` into an RGB image, fully read (the file can go away afterwards).

    Args:
        path: the file.
        name: how to call the file in a message (a browser upload's original name, not its temporary path).

    Raises:
        ChatInputError: the file is missing, unreadable, or not an image PIL can decode.
    """
    path = Path(path).expanduser()
    name = name or str(path)
    if not path.exists():
        raise ChatInputError(f"No such file: {name}. Attach an existing image file.")
    if path.is_dir():
        raise ChatInputError(f"{name} is a folder, not an image file.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() loads the pixels, so a truncated file fails here, not later
    except UnidentifiedImageError:
        raise ChatInputError(
            f"{name} is not an image (or not in a format Pillow can read). Attach a PNG, JPEG, WebP, GIF or BMP file."
        ) from None
    except OSError as error:  # permissions, truncated or corrupt image data
        raise ChatInputError(f"Could not read {name} as an image: {error}.") from None
