"""Key-rename tables between checkpoint layouts, and the strict check that every key is accounted for.

A `KeyMap` renames with an ordered list of regexes (the first that matches wins) and lists what may be dropped.
`plan_keys` then sorts every source key into renamed, ignored or unexpected, and `check_against_model` compares the
renamed keys and shapes with a model's state dict, so that a conversion fails loudly, naming keys, before writing.
"""

import re
from dataclasses import dataclass, field

from .errors import ConversionError

# Keys some checkpoints carry that no model needs: non-persistent buffers saved by older transformers versions.
BUFFER_KEYS = (r".*\.position_ids$", r".*\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class KeyMap:
    """Renames checkpoint keys: `renames` is an ordered list of (regex, replacement); `ignore` lists droppable keys."""

    name: str
    renames: tuple[tuple[str, str], ...]
    ignore: tuple[str, ...] = BUFFER_KEYS

    def rename(self, key: str) -> str | None:
        """The new name of `key`, or None when no rule matches."""
        for pattern, replacement in self.renames:
            new_key, count = re.subn(pattern, replacement, key, count=1)
            if count:
                return new_key
        return None

    def is_ignored(self, key: str) -> bool:
        return any(re.fullmatch(pattern, key) for pattern in self.ignore)

    def with_ignored(self, *patterns: str) -> "KeyMap":
        return KeyMap(self.name, self.renames, self.ignore + patterns)


# TinyLLaVA Factory (reference §6.1): `language_model` is the whole *ForCausalLM, the vision model sits in
# `vision_tower._vision_tower` with the transformers-4.x `vision_model.` level (absent in v5 CLIP/SigLIP modules),
# the connector module in `connector._connector`.
FACTORY = KeyMap(
    "factory",
    (
        (r"^language_model\.model\.", "model.language_model."),
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^vision_tower\._vision_tower\.vision_model\.", "model.vision_tower."),
        (r"^vision_tower\._vision_tower\.", "model.vision_tower."),  # DINOv2 has no vision_model level
        (r"^connector\._connector\.", "model.connector."),
    ),
)

# The Factory's pretrain-stage split layout stores each part under its own directory, keyed relative to the part;
# these prefixes turn its keys into full Factory keys before `FACTORY` applies.
FACTORY_SPLIT_PREFIXES = {
    "language_model": "language_model.",
    "vision_tower": "vision_tower._vision_tower.",
    "connector": "connector.",
}

# Legacy TinyLLaVABench / LLaVA layout (reference §6.2): the LLM's own keys at the top level, with the vision tower
# and projector nested in `model.`; those two rules must come first.
LEGACY = KeyMap(
    "legacy",
    (
        (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
        (r"^model\.mm_projector\.", "model.connector."),
        (r"^model\.", "model.language_model."),
        (r"^lm_head\.", "lm_head."),
    ),
)

# Our in-memory keys <-> transformers' LlavaForConditionalGeneration in-memory keys (transformers itself maps those
# to and from the legacy on-disk `language_model.model.*` layout when saving and loading).
TO_LLAVA = KeyMap(
    "to-llava",
    (
        (r"^model\.connector\.0\.", "model.multi_modal_projector.linear_1."),
        (r"^model\.connector\.2\.", "model.multi_modal_projector.linear_2."),
        (r"^(model\.(vision_tower|language_model)\.|lm_head\.)", r"\1"),
    ),
)
FROM_LLAVA = KeyMap(
    "from-llava",
    (
        (r"^model\.multi_modal_projector\.linear_1\.", "model.connector.0."),
        (r"^model\.multi_modal_projector\.linear_2\.", "model.connector.2."),
        (r"^(model\.(vision_tower|language_model)\.|lm_head\.)", r"\1"),
    ),
)


@dataclass
class KeyPlan:
    """Where each source key goes: `renamed` maps source key -> target key."""

    renamed: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def plan_keys(keys, keymap: KeyMap) -> KeyPlan:
    """Sorts source `keys` into renamed, ignored and unexpected (no rule matched, not ignorable)."""
    plan = KeyPlan()
    targets: dict[str, str] = {}
    for key in keys:
        if keymap.is_ignored(key):
            plan.ignored.append(key)
            continue
        new_key = keymap.rename(key)
        if new_key is None:
            plan.unexpected.append(key)
            continue
        if new_key in targets:
            raise ConversionError(f"Source keys {targets[new_key]!r} and {key!r} both map to {new_key!r}.")
        targets[new_key] = key
        plan.renamed[key] = new_key
    return plan


def _listing(title: str, keys: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"  {key}" for key in keys[:limit])
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}):\n{shown}{more}"


def check_against_model(
    plan: KeyPlan,
    source_shapes: dict[str, tuple[int, ...]],
    expected_shapes: dict[str, tuple[int, ...]],
    optional: set[str] = frozenset(),
    resizable: set[str] = frozenset(),
    source: str = "the checkpoint",
) -> None:
    """Raises one `ConversionError` listing unexpected, missing and wrongly shaped keys, if there are any.

    Args:
        plan: the output of `plan_keys`.
        source_shapes: source key -> shape.
        expected_shapes: target key -> shape, from the target model's state dict.
        optional: target keys that may be absent (tied output embeddings).
        resizable: target keys whose first dimension may grow (vocabulary rows added for `<image>`).
        source: how to name the source in the message.
    """
    problems = []
    if plan.unexpected:
        problems.append(_listing("Unexpected keys, matched by no rename rule", plan.unexpected))
    produced = set(plan.renamed.values())
    missing = sorted(set(expected_shapes) - produced - set(optional))
    if missing:
        problems.append(_listing("Missing keys, needed by the model", missing))
    not_in_model = sorted(produced - set(expected_shapes))
    if not_in_model:
        sources = [f"{src} -> {dst}" for src, dst in plan.renamed.items() if dst in not_in_model]
        problems.append(_listing("Unexpected keys, renamed to names the model does not have", sources))
    mismatched = []
    for src, dst in plan.renamed.items():
        if dst not in expected_shapes:
            continue
        have, want = tuple(source_shapes[src]), tuple(expected_shapes[dst])
        grows = dst in resizable and len(have) == len(want) and have[1:] == want[1:] and have[0] <= want[0]
        if have != want and not grows:
            mismatched.append(f"{src} -> {dst}: checkpoint {list(have)}, model {list(want)}")
    if mismatched:
        problems.append(_listing("Shape mismatches", mismatched))
    if problems:
        raise ConversionError(f"{source} does not match the target model:\n" + "\n".join(problems))
