"""Which transformers auto class builds a checkpoint, asked of transformers' own auto mappings.

    auto, reason = auto_model_class(config)      # AutoModelForImageTextToText, "LlavaForConditionalGeneration ..."
    takes_images(config)                          # True when transformers registers it for image-text-to-text

A chat model is built by one of the generating auto classes, tried in this order: causal LM (text),
image-text-to-text (vision-language), multimodal LM. The class named in config.json's `architectures`
decides: the first auto class whose mapping builds that very class for this config wins, so Llama 3.2
Vision (`MllamaForConditionalGeneration`) loads whole rather than as its text model alone. A config
without `architectures` (or naming a class no auto class builds) takes the first auto class that knows
its config class. No table of families: transformers' mappings are the list. transformers is imported
only when a function is called (the planner's fast path never calls them).
"""

from __future__ import annotations

from planner.errors import ShardwiseError

# the auto classes that build a text-generating chat model, text first (names: some are absent in older releases)
GENERATING_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")
# those whose models take images beside text
IMAGE_AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForMultimodalLM")


def _auto_classes(names: tuple[str, ...]) -> list:
    import transformers

    return [getattr(transformers, name) for name in names if hasattr(transformers, name)]


def _built_class(auto, config):
    """The model class `auto` builds for this config (None: the config class is not in its mapping)."""
    mapping = auto._model_mapping
    if type(config) not in mapping:
        return None
    try:
        return mapping[type(config)]
    except (KeyError, ImportError, AttributeError):  # registered name whose module this install lacks
        return None


def auto_model_class(config) -> tuple[object, str]:
    """(auto class, reason) for a transformers config; ShardwiseError when no generating auto class builds it."""
    named = [str(c) for c in (getattr(config, "architectures", None) or ())]
    autos = _auto_classes(GENERATING_AUTO_CLASSES)
    auto_map = getattr(config, "auto_map", None) or {}
    for auto in autos:  # code shipped with the model: the auto class its auto_map registers (consent is the caller's)
        if auto.__name__ in auto_map:
            return auto, f"{auto_map[auto.__name__]} from the model's own code (auto_map) through {auto.__name__}"
    built = [(auto, cls) for auto in autos if (cls := _built_class(auto, config)) is not None]
    for auto, cls in built:
        if cls.__name__ in named:
            return auto, f"{cls.__name__} (named in config.json architectures) through {auto.__name__}"
    if built:
        auto, cls = built[0]
        said = f"config.json names {', '.join(named)}" if named else "config.json names no class"
        return auto, f"{cls.__name__} through {auto.__name__} for model_type {config.model_type!r} ({said})"
    model_type = getattr(config, "model_type", "?")
    raise ShardwiseError(
        f"transformers has no chat (text-generating) class for model_type {model_type!r} "
        f"(architectures {named or 'none'}): shardwise runs causal LM and image-text-to-text models"
    )


def takes_images(config) -> bool:
    """Whether transformers registers this config for an auto class whose models take images."""
    return any(_built_class(auto, config) is not None for auto in _auto_classes(IMAGE_AUTO_CLASSES))
