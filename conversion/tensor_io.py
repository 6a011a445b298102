"""Lazy reading of checkpoint tensors and streaming safetensors writing, so that conversion never holds a model.

Reading: safetensors files are opened per tensor (a memory map whose pages are released when the file is closed);
`.bin` files are loaded with `torch.load(weights_only=True, mmap=True)`, one file at a time. Writing: the safetensors
header is computed from the planned shapes and dtypes first, then tensors are written one by one, so peak memory is
about one tensor rather than one shard (the `safetensors` library only writes whole dicts).
"""

import json
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import ConversionError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# safetensors' dtype names (https://github.com/huggingface/safetensors, "Format").
_SAFETENSORS_DTYPE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH_DTYPE = {name: dtype for dtype, name in _SAFETENSORS_DTYPE.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class TensorInfo:
    """Where a source tensor lives and what it looks like, without its data."""

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a directory: safetensors if any (shards in name order), else `.bin` files."""
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(p for p in directory.glob(f"*{suffix}") if p.name != "training_args.bin")
        if files:
            return files
    return []


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict, memory-mapped when the file is in the zip format. Never unpickles arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise ConversionError(f"Could not read {path}: {error}") from error
        logger.warning("%s is in the legacy (non-zip) format and is read fully into memory.", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError for files that need more than weights_only allows
        # torch's message is long and ends by suggesting weights_only=False; keep the line naming the culprit.
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else repr(error))
        raise ConversionError(
            f"{path} cannot be read with weights_only=True ({detail}): it holds Python objects besides tensors, and "
            "unpickling them could run arbitrary code. Save its state dict again with tensors only, or as "
            "safetensors."
        ) from error


def _open_safetensors(path: Path):
    """`safe_open(path)`, with a corrupt or truncated file named in a ConversionError."""
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as error:
        raise ConversionError(
            f"{path} is not a readable safetensors file ({error}); it is probably truncated or corrupt: download it "
            "again."
        ) from error


def list_tensors(files: Iterable[Path], prefix: str = "") -> list[TensorInfo]:
    """Shapes and dtypes of every tensor in `files`, keys prefixed with `prefix`; reads headers only."""
    infos = []
    for path in files:
        if path.suffix == ".safetensors":
            with _open_safetensors(path) as handle:
                for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                    tensor_slice = handle.get_slice(key)
                    dtype = _TORCH_DTYPE[tensor_slice.get_dtype()]
                    infos.append(TensorInfo(path, prefix + key, tuple(tensor_slice.get_shape()), dtype))
        else:
            state_dict = _load_bin(path)
            for key, tensor in state_dict.items():
                if not isinstance(tensor, torch.Tensor):
                    raise ConversionError(f"{path}: entry {key!r} is a {type(tensor).__name__}, not a tensor.")
                infos.append(TensorInfo(path, prefix + key, tuple(tensor.shape), tensor.dtype))
            del state_dict
    return infos


class TensorReader:
    """Reads the data of `TensorInfo`s; keeps at most one `.bin` file mapped at a time."""

    def __init__(self, prefixes: dict[Path, str] | None = None):
        self._prefixes = prefixes or {}
        self._bin_path: Path | None = None
        self._bin: dict[str, torch.Tensor] = {}

    def read(self, info: TensorInfo) -> torch.Tensor:
        key = info.key[len(self._prefixes.get(info.file, "")) :]
        if info.file.suffix == ".safetensors":
            with _open_safetensors(info.file) as handle:
                return handle.get_tensor(key)
        if self._bin_path != info.file:
            self._bin, self._bin_path = _load_bin(info.file), info.file
        return self._bin[key]

    def close(self) -> None:
        self._bin, self._bin_path = {}, None


@dataclass(frozen=True)
class OutputTensor:
    """A tensor of the converted checkpoint: its name, final shape and dtype, and how to produce its data."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


def _shards(tensors: list[OutputTensor], max_shard_bytes: int) -> Iterator[list[OutputTensor]]:
    shard, size = [], 0
    for tensor in tensors:
        if shard and size + tensor.nbytes > max_shard_bytes:
            yield shard
            shard, size = [], 0
        shard.append(tensor)
        size += tensor.nbytes
    if shard:
        yield shard


def _write_safetensors(path: Path, tensors: list[OutputTensor]) -> None:
    """Writes one safetensors file, one tensor at a time, checking each produced tensor against its plan."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for tensor in tensors:
        header[tensor.key] = {
            "dtype": _SAFETENSORS_DTYPE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for tensor in tensors:
            data = tensor.produce()
            if tuple(data.shape) != tensor.shape or data.dtype != tensor.dtype:
                raise ConversionError(
                    f"{tensor.key}: produced {tuple(data.shape)} {data.dtype}, planned {tensor.shape} {tensor.dtype}."
                )
            # A flat byte view of a contiguous copy; works for bfloat16, which numpy cannot represent.
            handle.write(data.contiguous().reshape(-1).view(torch.uint8).numpy())
            del data


def write_sharded_safetensors(directory: Path, tensors: list[OutputTensor], max_shard_bytes: int) -> list[str]:
    """Writes `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus the index transformers reads.

    Returns:
        The written file names.
    """
    shards = list(_shards(tensors, max_shard_bytes))
    if len(shards) == 1:
        _write_safetensors(directory / "model.safetensors", shards[0])
        return ["model.safetensors"]
    names, weight_map = [], {}
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(directory / name, shard)
        names.append(name)
        weight_map.update({tensor.key: name for tensor in shard})
    total_size = sum(tensor.nbytes for tensor in tensors)
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names + ["model.safetensors.index.json"]


def parse_size(size: str | int) -> int:
    """`"2GB"`, `"500MB"` or a byte count, as `max_shard_size` in transformers."""
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    if text.isdigit():
        return int(text)
    raise ConversionError(f"--max-shard-size {size!r} is not a size like '2GB' or '500MB'.")
