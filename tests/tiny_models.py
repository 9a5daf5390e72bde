"""Tiny chat models built from configs for tests and benchmarks: no hub, no network.

Each builder writes a complete model directory (config.json, safetensors with random weights,
a tokenizer trained in memory) under `cache_dir` and returns its path; a second call with the
same `cache_dir` reuses the directory. They are plain functions rather than fixtures so any
test module (or a benchmark) can call them with its own temporary directory:

    from tiny_models import tiny_llama, cpu_plan
    model_dir = tiny_llama(tmp_path_factory.mktemp("models"))
    plan = cpu_plan(model_dir)

Models:
- `tiny_llama`: Llama-style, with a ChatML-like chat template in its tokenizer.
- `tiny_gpt2`: GPT-2 without a chat template (the runner's plain fallback applies).
- `tiny_gpt_oss`: gpt-oss MoE with alternating sliding/full attention, no quantization_config.
- `tiny_llava`: a LLaVA vision-language model (CLIP vision tower, projector, Llama text model) saved
  with its processor: the tokenizer, LLaVA's image processor with its default settings (224 x 224
  crops) and a chat template that places `<image>` where an image part was; each image is 49 tokens.
Tokenizers are byte-level BPE, so every string round-trips through encode/decode.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today? I am fine, thank you.",
    "User: what is the capital of France? Assistant: Paris is the capital.",
    "System: you are a helpful assistant that answers briefly.",
    "one two three four five six seven eight nine ten eleven twelve",
    "memory, tokens, context, model, GPU, CPU, plan, shard, layer, cache",
    "STOP stop Stop END end ### --- *** \n\n\t",
    "0123456789 + - * / = ( ) [ ] { } < > | : ; ' \" ! ? . ,",
] * 20

# config.json numbers of a 2-layer llama, for tests that write hostile or edited configs (never loaded)
TINY_LLAMA_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "torch_dtype": "float32",
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def train_tokenizer(vocab_size: int = 400, chat_template: str | None = None, eos_token: str = "<|endoftext|>"):
    """A byte-level BPE tokenizer trained on a small corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=eos_token,
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _build(path: Path, config, tokenizer, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _ids(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_llama(
    cache_dir,
    *,
    name: str = "tiny-llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 256,
    vocab_size: int = 400,
    seed: int = 0,
) -> Path:
    """A Llama-style model with a chat template; sizes are knobs so benchmarks can build larger ones."""
    from transformers import LlamaConfig

    tokenizer = train_tokenizer(vocab_size, chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>")
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        **_ids(tokenizer),
    )
    return _build(Path(cache_dir) / name, config, tokenizer, seed)


def tiny_gpt2(
    cache_dir,
    *,
    name: str = "tiny-gpt2",
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
) -> Path:
    """A GPT-2 without a chat template (eos <|endoftext|>)."""
    from transformers import GPT2Config

    tokenizer = train_tokenizer()
    config = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions, **_ids(tokenizer))
    return _build(Path(cache_dir) / name, config, tokenizer, seed)


def tiny_gpt_oss(cache_dir, *, name: str = "tiny-gpt-oss", seed: int = 0) -> Path:
    """gpt-oss with 4 experts (2 per token), sliding window 8 on alternate layers, no quantization."""
    from transformers import GptOssConfig

    tokenizer = train_tokenizer(chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>")
    config = GptOssConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 2.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 128,
            "truncate": False,
        },
        **_ids(tokenizer),
    )
    return _build(Path(cache_dir) / name, config, tokenizer, seed)


# ChatML reading content only as a list of parts, as processor templates do (LLaVA's own drops a plain string):
# "<image>" where an image was
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAVA_IMAGE_TOKENS = (224 // 32) ** 2  # tokens per image: 7 x 7 patches of the 224-pixel crop (CLS dropped)


def tiny_llava(cache_dir, *, name: str = "tiny-llava", seed: int = 0) -> Path:
    """LLaVA: a 1-layer CLIP vision tower (patch 32 on 224 x 224), a projector, a 2-layer Llama; and its processor."""
    import torch
    from transformers import AutoModelForImageTextToText, LlavaConfig, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    path = Path(cache_dir) / name
    if (path / "config.json").is_file() and (path / "processor_config.json").is_file():
        return path
    tokenizer = train_tokenizer(chat_template=VLM_CHAT_TEMPLATE, eos_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        **_ids(tokenizer),
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=32,
    )
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessorPil(),  # its defaults; the PIL backend needs no torchvision
        tokenizer=tokenizer,
        patch_size=32,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops again
        chat_template=VLM_CHAT_TEMPLATE,
        image_token="<image>",
    )
    processor.save_pretrained(path)
    return path


def png_data_url(width: int = 40, height: int = 30, color=(200, 30, 30)) -> str:
    """A small solid-colour PNG as a data: URL (what an OpenAI client sends for an inline image); color=None:
    seeded noise, which PNG cannot compress (width x height x 3 bytes)."""
    import base64
    import io
    import random

    from PIL import Image

    buffer = io.BytesIO()
    if color is None:
        image = Image.frombytes("RGB", (width, height), random.Random(0).randbytes(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), color)
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def model_config(model_dir) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def cpu_plan(
    model_dir,
    *,
    device_map: dict | None = None,
    strategy: str = "cpu",
    context_tokens: int | None = None,
    max_new_tokens: int = 64,
    fallbacks: tuple = (),
    fingerprint: str = "hw-test-cpu",
    hardware_source: str = "cpu",
    dtype: str = "float32",
    offload_folder: str | None = None,
    chat_template: str | None = None,
    quantization=None,
    attn_implementation: str = "sdpa",
):
    """A hand-built Plan for a tiny model directory (what the planner would say for hardware=cpu)."""
    from planner.planfile.plan import Decision, Limits, ModelInfo, Plan, Quantization

    config = model_config(model_dir)
    max_positions = config.get("max_position_embeddings") or config.get("n_positions") or 0
    model = ModelInfo(
        name=Path(model_dir).name,
        source=str(model_dir),
        model_type=config["model_type"],
        params_total=0,
        weight_bytes=0,
        checkpoint_bytes=None,
        dtype=dtype,
        quantization=quantization or Quantization(method=None, kept=False, reason="not quantized"),
        max_context_tokens=max_positions,
        num_layers=config.get("num_hidden_layers") or config.get("n_layer") or 0,
        chat_template=chat_template,
    )
    return Plan(
        model=model,
        hardware={"source": hardware_source, "fingerprint": fingerprint, "devices": [], "host_ram_bytes": 8 << 30},
        strategy=strategy,
        nodes=1,
        tp_size=1,
        pp_size=1,
        device_map=device_map if device_map is not None else {"": "cpu"},
        max_memory={"cpu": 4 << 30},
        budget=(),
        limits=Limits(
            context_tokens=context_tokens or max_positions,
            sessions=1,
            max_new_tokens=max_new_tokens,
            kv_bytes_per_token=0,
        ),
        fits=True,
        decisions=(Decision("strategy", strategy, "test plan"),),
        fallbacks=tuple(fallbacks),
        attn_implementation=attn_implementation,
        offload_folder=offload_folder,
    )


def cpu_serving(model_dir, *, sessions: int = 4, context_tokens: int | None = None):
    """The serving block the planner gives this tiny model on the CPU (float32, sdpa) for `sessions` sequences."""
    from planner.memory.serving import plan_serving
    from planner.model.inventory import build_inventory

    config = model_config(model_dir)
    context = context_tokens or config.get("max_position_embeddings") or config.get("n_positions")
    inv = build_inventory(config, dtype="float32")
    return plan_serving(
        inv, dtype_bytes=4, attn="sdpa", strategy="cpu", context=context, sessions=sessions, on_gpu=False
    )
