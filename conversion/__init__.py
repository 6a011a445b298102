"""Checkpoint conversion: original TinyLLaVA (Factory, legacy) in; transformers-native LLaVA in and out; ONNX out.

Run `tinyllava-convert --help` (or `python -m tinyllava_hf.conversion --help`) for the command line.
"""

from .errors import ConversionError
from .llava import from_llava, to_llava
from .onnx_convert import to_onnx
from .original import ConversionResult, convert_original

__all__ = ["ConversionError", "ConversionResult", "convert_original", "from_llava", "to_llava", "to_onnx"]
