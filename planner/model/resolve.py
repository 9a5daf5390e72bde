"""Which transformers class a config.json builds, asked of transformers' own auto mappings.

`architectures` names the class the checkpoint was saved from; transformers registers each
generative class in one of its task mappings (causal LM, image-text-to-text, multimodal LM).
The class is looked up there by name, so a new family needs no table here; without
`architectures` (or when it names a class transformers does not ship) the `model_type` is looked
up in the same mappings, multimodal first so a vision-language config keeps its encoders.
A class or model type transformers registers only for other tasks (masked LM, sequence
classification, sequence-to-sequence) is refused in one line: shardwise plans chat decoders.
Imports transformers (the caller has decided to build on the meta device).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import ShardwiseError

# transformers' task mappings whose classes generate text from a prompt, most complete first: a
# multimodal model_type maps to its conditional-generation class there (vision tower included)
GENERATIVE_MAPPINGS = (
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
)
SEQ2SEQ_MAPPINGS = ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES")


@dataclass(frozen=True)
class Resolved:
    model_class: type
    config_class: type  # the config class the model class is built from
    reason: str  # how the class was found, for decisions[]


def _mappings(names: tuple[str, ...]) -> list[dict]:
    from transformers.models.auto import modeling_auto

    return [getattr(modeling_auto, n) for n in names if isinstance(getattr(modeling_auto, n, None), dict)]


def _class_names(mappings: list[dict]) -> set[str]:
    names: set[str] = set()
    for mapping in mappings:
        for value in mapping.values():
            names.update([value] if isinstance(value, str) else value)
    return names


def _transformers_class(name: str):
    import transformers

    try:
        return getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):  # not shipped, or its optional dependency is missing
        return None


def _version() -> str:
    import transformers

    return transformers.__version__


def _not_generative(what: str, seq2seq: bool) -> ShardwiseError:
    if seq2seq:
        return ShardwiseError(f"{what} is an encoder-decoder model: shardwise plans decoder-only (causal) chat models")
    return ShardwiseError(f"{what} is not a causal language model: shardwise plans decoder-only (causal) chat models")


def resolve(arch: dict, model_type: str) -> Resolved:
    """The class transformers builds for this config.json, or a one-line ShardwiseError."""
    generative = _mappings(GENERATIVE_MAPPINGS)
    generative_names = _class_names(generative)
    seq2seq = _mappings(SEQ2SEQ_MAPPINGS)
    named = [str(c) for c in arch.get("architectures") or ()]
    for class_name in named:
        if class_name in generative_names:
            cls = _transformers_class(class_name)
            if cls is not None:
                return Resolved(cls, cls.config_class, f"{class_name}, named in config.json `architectures`")
    for class_name in named:  # a class transformers ships, but for another task
        if _transformers_class(class_name) is not None:
            raise _not_generative(f"{model_type} ships {class_name}, which", class_name in _class_names(seq2seq))
    masked = _mappings(("MODEL_FOR_MASKED_LM_MAPPING_NAMES",))
    if any(model_type in m for m in masked):  # an encoder family; its causal head serves encoder-decoder stacks
        raise _not_generative(f"model_type {model_type!r} (an encoder transformers registers for masked LM)", False)
    for mapping in generative:
        class_name = mapping.get(model_type)
        if isinstance(class_name, (list, tuple)):
            class_name = class_name[0]
        cls = _transformers_class(class_name) if class_name else None
        if cls is not None:
            why = "config.json names no class transformers ships" if named else "config.json has no `architectures`"
            return Resolved(cls, cls.config_class, f"{class_name}, registered for model_type {model_type!r} ({why})")
    from transformers import CONFIG_MAPPING

    if model_type in CONFIG_MAPPING:
        raise _not_generative(f"model_type {model_type!r}", any(model_type in m for m in seq2seq))
    remote = f" (its class {', '.join(named)} needs the checkpoint's own code)" if named else ""
    raise ShardwiseError(
        f"cannot size architecture {model_type!r}: transformers {_version()} has no model type of that name{remote}; "
        "give model.path to a directory with safetensors files or use a known family"
    )
