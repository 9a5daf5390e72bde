"""Chat prompts: the template, and fitting a conversation inside the context window.

    prompt = ChatPrompt(tokenizer, profile_template=plan.model.chat_template, system_prompt=None, processor=None)
    ids, dropped = prompt.fit(messages, context_tokens=4096, max_tokens=256, cancel=event)
    fitted = prompt.fit_inputs(messages, context_tokens=4096, max_tokens=256)   # + .media for a model's images

One module for every path that builds a prompt (ChatSession, the tensor-parallel rank), so they
render and cut conversations the same way:
- the template is the tokenizer's own, else the plan's profile template, else one plain
  "Role: text" template (gpt2); a model on the plain template writes the next "User:" turn
  itself, so that line is a stop string (`template_stops`);
- fitting keeps the prompt plus room for the reply inside the context: the oldest non-system
  messages are dropped whole (never the last one, never leaving an assistant reply first);
  a conversation that cannot fit even then raises ContextLengthError, never a silent cut of
  the prompt's head;
- a model that takes images has a processor (transformers' AutoProcessor), which expands each image
  into the model's image tokens and makes its pixel inputs (`FittedPrompt.media`); the rendered prompt
  must hold exactly one image placeholder per image, so text cannot smuggle in one of its own;
- a template that reads content as a list of parts (processor templates such as LLaVA's, which drop a
  plain string silently; asked of the template with a probe) gets every message that way: text parts,
  and `{"type": "image"}` where an image was;
- fitting is linear in the conversation: each message's text is tokenized once (in one batch),
  its role's template wrapper is measured once per role, the number to drop comes from prefix
  sums over those counts, and only the kept tail is encoded to check it (a conversation of
  thousands of short messages must not hold a server). A cancellation event is checked between
  steps;
- a message whose first characters alone already count far more tokens than the context holds is judged from
  that prefix: refused when it must stay (the last one, a system message), dropped otherwise; a 1 MB message
  for a 256-token context cost seconds of CPU and hundreds of MB per request, tokenized whole three times.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from itertools import accumulate

from planner.errors import ShardwiseError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Models without a template (gpt2) happily write the next user turn themselves.
FALLBACK_STOPS = ("\nUser:",)


# A kept message is refused from a prefix once the prefix alone counts more than twice the context plus this
# many tokens. Cutting a text can change only the tokens around the cut (the last word of the prefix), so the whole
# message has at least about as many tokens as its prefix; twice the context leaves a wide margin over that.
PREFIX_MARGIN_TOKENS = 64
# Characters of the prefix tokenized per token it must count: text runs about 4 characters a token, so a prefix this
# long reaches the count for any ordinary text; when it does not, the message is fitted the usual way (exactly).
PREFIX_CHARS_PER_TOKEN = 16


class ContextLengthError(ShardwiseError):
    """A single message (with the system prompt) does not fit in the context window."""


class PromptCancelled(Exception):
    """The caller cancelled while the prompt was being fitted (nothing was generated)."""


@dataclass
class FittedPrompt:
    """A prompt inside the context window: its ids, what the processor made for its images, what was dropped."""

    ids: list[int]
    dropped: int = 0  # oldest messages left out to fit
    media: dict = field(default_factory=dict)  # extra model inputs for the images (pixel_values, ...); {} for text
    images: int = 0  # images in the kept messages


def _text(content) -> str:
    """The text of a message's content: a str, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content if content is not None else "")


def check_unicode(text: str, what: str) -> None:
    """`text` is Unicode a tokenizer can encode: bytes that were not UTF-8 (an argument or a piped stdin read with
    surrogateescape, a JSON "\\udcff" escape) arrive as lone surrogates, which the Rust tokenizer refuses with a
    TypeError. `what` names the text in the one-line error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ShardwiseError(
            f"{what} holds {text[exc.start]!r} at character {exc.start}, which is not Unicode text (bytes that were "
            "not UTF-8?): send UTF-8 text"
        ) from None


def _check_unicode(messages: list[dict]) -> None:
    for message in messages:
        check_unicode(_text(message.get("content")), f"a {message.get('role', 'user')} message")


def _images(messages: list[dict]) -> list:
    return [
        p["image"]
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") == "image"
    ]


def context_tokens(plan, model_config) -> int:
    """Prompt + reply tokens per turn: the plan's limit, else the model's own maximum (2048 when unknown)."""
    planned = plan.limits.context_tokens if plan is not None else 0
    own = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None) or 2048
    return min(planned, own) if planned else own


def reply_room(context: int, max_tokens: int) -> int:
    """Tokens kept free for the reply while fitting: max_tokens, but never more than a quarter of the context."""
    return max(1, min(max_tokens, context // 4))


def max_new_tokens(context: int, prompt_tokens: int, max_tokens: int, plan_max_new_tokens: int = 0) -> int:
    """New tokens for a turn: max_tokens, capped by the room left in the context and the plan's max_new_tokens."""
    budget = min(max_tokens, context - prompt_tokens)
    return min(budget, plan_max_new_tokens) if plan_max_new_tokens else budget


class ChatPrompt:
    """A tokenizer (and, for a model that takes images, its processor) with its chat template and the
    conversation's system prompt."""

    def __init__(
        self,
        tokenizer,
        *,
        profile_template: str | None = None,
        system_prompt: str | None = None,
        processor=None,
    ):
        self.tokenizer = tokenizer
        self.processor = processor
        own = getattr(processor, "chat_template", None) if processor is not None else None
        if isinstance(own, dict):  # named templates: the default one is the chat's
            own = own.get("default")
        self.template = (
            (own if isinstance(own, str) else None) or tokenizer.chat_template or profile_template or FALLBACK_TEMPLATE
        )
        self.template_stops = FALLBACK_STOPS if self.template == FALLBACK_TEMPLATE else ()
        self.system_prompt = system_prompt
        # the placeholder the processor expands into image tokens (None: no processor, or it names none)
        token = getattr(processor, "image_token", None) if processor is not None else None
        self.image_token = token if isinstance(token, str) and token else None
        self.content_as_parts = self._template_wants_parts()

    def _template_wants_parts(self) -> bool:
        """Whether messages reach the template with their content as a list of parts, asked of the template itself:
        processor templates (LLaVA's) read only parts and drop a plain string without a word; tokenizer templates
        mostly read strings. With a processor, parts where the template renders them."""
        probe = "shardwise-template-probe"

        def shows(content) -> bool:
            try:
                out = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}],
                    chat_template=self.template,
                    tokenize=False,
                    add_generation_prompt=True,
                )
            except Exception:  # a template that raises on this form does not take it
                return False
            return probe in out and "'type'" not in out  # a list printed whole is not a template reading parts

        parts, text = shows([{"type": "text", "text": probe}]), shows(probe)
        return parts if self.processor is not None else parts and not text

    @property
    def takes_images(self) -> bool:
        return self.processor is not None

    def with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def _for_template(self, messages: list[dict]) -> list[dict]:
        """Messages as the template gets them: for a template that reads parts, every content as a list of parts
        (images as {"type": "image"}: the template places the placeholder, the pixels go to the processor)."""
        if not self.content_as_parts:
            return messages
        shaped = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                parts = [{"type": "image"} if p.get("type") == "image" else p for p in content]
            else:
                parts = [{"type": "text", "text": _text(content)}]
            shaped.append({**m, "content": parts})
        return shaped

    def render(self, messages: list[dict], *, generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            self._for_template(messages),
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    def encode(self, messages: list[dict]) -> list[int]:
        """Prompt ids for exactly these messages (no system prompt added), ready for the reply."""
        return self.encode_with_media(messages)[0]

    def encode_with_media(self, messages: list[dict]) -> tuple[list[int], dict]:
        """Prompt ids and the processor's extra model inputs for the messages' images ({} without images)."""
        images = _images(messages)
        if images and self.processor is None:
            raise ShardwiseError(
                "these messages hold images but this model takes text only (it has no image processor): send text"
            )
        text = self.render(messages)
        if self.image_token is not None and text.count(self.image_token) != len(images):
            raise ShardwiseError(
                f"the prompt holds {text.count(self.image_token)} of the model's image placeholder "
                f"{self.image_token!r} for {len(images)} image(s): a message's text may not contain "
                f"{self.image_token!r}; send images as image_url parts"
            )
        if not images:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], {}
        try:
            # one conversation's images nested in a list, as transformers' own apply_chat_template hands them over
            out = self.processor(text=[text], images=[images], return_tensors="pt", add_special_tokens=False)
        except (ValueError, TypeError, IndexError) as exc:  # the processor refuses these images for this model
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ShardwiseError(f"the model's processor refused these images: {why}") from None
        media = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
        return out["input_ids"][0].tolist(), media

    def token_count(self, messages: list[dict]) -> int:
        return len(self.encode(self.with_system(messages)))

    def _lengths(self, texts: list[str]) -> list[int]:
        """Token counts of many texts in one call (the Rust tokenizer directly when there is one: no per-text
        Python objects)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def _rendered_length(self, messages: list[dict], generation_prompt: bool) -> int | None:
        try:
            return self._lengths([self.render(messages, generation_prompt=generation_prompt)])[0]
        except Exception:  # a template that refuses this probe (an empty or assistant-first conversation)
            return None

    def _wrapper_tokens(self, role: str) -> int:
        """Tokens the template puts around one message of `role` (measured on a one-word probe)."""
        probe = {"role": role, "content": "x"}
        word = self._lengths(["x"])[0]
        base = self._rendered_length([], False) or 0
        alone = self._rendered_length([probe], False)
        if alone is not None:
            return max(0, alone - base - word)
        first = {"role": "user", "content": "x"}  # templates that insist on a user turn first
        pair, single = self._rendered_length([first, probe], False), self._rendered_length([first], False)
        return max(0, pair - single - word) if pair is not None and single is not None else 0

    def _message_costs(self, messages: list[dict], context_tokens: int) -> list[int]:
        """About the tokens each message adds to a prompt: its text's tokens plus its role's wrapper.

        An estimate (tokens can merge across a boundary, templates treat the first message apart):
        fitting uses it to choose how many messages to drop, then encodes the result exactly.
        """
        wrappers = {role: self._wrapper_tokens(role) for role in {m.get("role") for m in messages}}
        texts = [_text(m.get("content")) for m in messages]
        enough, prefix_chars = _prefix_bounds(context_tokens)
        counts = self._lengths([text[:prefix_chars] for text in texts])
        # a message whose prefix alone counts more than `enough` must be dropped for anything to fit: that lower
        # bound chooses the drop as well as its exact count would (the kept tail is encoded exactly after)
        whole = [i for i, text in enumerate(texts) if len(text) > prefix_chars and counts[i] <= enough]
        for i, count in zip(whole, self._lengths([texts[i] for i in whole])):
            counts[i] = count
        return [count + wrappers[m.get("role")] for m, count in zip(messages, counts)]

    def fit(
        self, messages: list[dict], *, context_tokens: int, max_tokens: int, cancel: threading.Event | None = None
    ) -> tuple[list[int], int]:
        """Prompt ids inside the context window, and how many of the oldest messages were dropped."""
        fitted = self.fit_inputs(messages, context_tokens=context_tokens, max_tokens=max_tokens, cancel=cancel)
        return fitted.ids, fitted.dropped

    def fit_inputs(
        self, messages: list[dict], *, context_tokens: int, max_tokens: int, cancel: threading.Event | None = None
    ) -> FittedPrompt:
        """`fit`, with the processor's inputs for the images the kept messages hold."""
        room = reply_room(context_tokens, max_tokens)
        kept = self.with_system(messages)
        _check_unicode(kept)  # before any tokenizing, the prefix count below included
        self._refuse_surely_too_long(kept, context_tokens)
        ids = media = None
        # The usual case: a conversation that is not obviously too long is encoded whole, once.
        if sum(len(_text(m.get("content"))) for m in kept) <= 4 * context_tokens:
            ids, media = self.encode_with_media(kept)
            if len(ids) + room <= context_tokens:
                return FittedPrompt(ids, 0, media, len(_images(kept)))
        _check(cancel)
        # Estimated costs count text only: an image's tokens are known once the processor has seen it, so
        # the exact encodings below correct the estimate (a little more is dropped on each pass).
        costs = self._message_costs(kept, context_tokens)
        fixed = self._rendered_length([], True) or 0
        if ids is not None:  # spread the estimate's error over the messages (separators, merges)
            error = (len(ids) - fixed - sum(costs)) / len(kept)
            costs = [cost + error for cost in costs]
        # Messages that may go, oldest first: never a system message, never the last message.
        droppable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
        freed = [0, *accumulate(costs[i] for i in droppable)]  # freed[j]: tokens saved by dropping droppable[:j]
        # Dropping j messages is allowed when the next one kept is not an assistant reply.
        everything = len(droppable)
        allowed = [0] + [
            j for j in range(1, everything + 1) if j == everything or kept[droppable[j]].get("role") != "assistant"
        ]

        def without(count: int) -> list[dict]:
            gone = set(droppable[:count])
            return [m for i, m in enumerate(kept) if i not in gone]

        def encode_without(count: int) -> tuple[list[int], dict]:
            _check(cancel)
            return self.encode_with_media(without(count))

        excess = (len(ids) if ids is not None else fixed + sum(costs)) + room - context_tokens
        dropped = 0
        while True:  # drop more until the exact encoding fits (or nothing more may go)
            if excess > 0 and allowed[-1] > dropped:
                target = freed[dropped] + excess
                dropped = next((j for j in allowed if j > dropped and freed[j] >= target), allowed[-1])
            elif ids is not None:
                break
            ids, media = encode_without(dropped)
            excess = len(ids) + room - context_tokens
        # The estimate may have dropped a message or two too many: take them back while they fit.
        for _ in range(8):
            back = max((j for j in allowed if j < dropped), default=None)
            if excess > 0 or back is None or freed[dropped] - freed[back] > -excess + 2:
                break
            candidate, candidate_media = encode_without(back)
            if len(candidate) + room > context_tokens:
                break
            dropped, ids, media, excess = back, candidate, candidate_media, len(candidate) + room - context_tokens
        if len(ids) >= context_tokens:
            last = kept[-1] if kept else {"content": ""}
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens (last message {len(self.encode([last]))} tokens with its template) "
                f"but the context window holds {context_tokens}: shorten the message, or plan a longer context "
                f"(policy.context_tokens)"
            )
        return FittedPrompt(ids, dropped, media, len(_images(without(dropped))))

    def _refuse_surely_too_long(self, kept: list[dict], context_tokens: int) -> None:
        """ContextLengthError when a message that cannot be dropped (a system message, the last one) is far longer
        than the context, judged from a prefix: tokenizing the whole of it would only confirm that, slowly."""
        enough, prefix_chars = _prefix_bounds(context_tokens)
        for index, message in enumerate(kept):
            if index != len(kept) - 1 and message.get("role") != "system":
                continue
            text = _text(message.get("content"))
            if len(text) <= prefix_chars:
                continue
            counted = self._lengths([text[:prefix_chars]])[0]
            if counted > enough:
                which = "last" if index == len(kept) - 1 else "system"
                raise ContextLengthError(
                    f"the prompt is more than {counted} tokens (its first {prefix_chars} characters of the {which} "
                    f"message alone, of {len(text)}) but the context window holds {context_tokens}: shorten the "
                    "message, or plan a longer context (policy.context_tokens)"
                )


def _prefix_bounds(context_tokens: int) -> tuple[int, int]:
    """(tokens a prefix must count to show its message is far past the context, characters of that prefix)."""
    enough = 2 * context_tokens + PREFIX_MARGIN_TOKENS
    return enough, PREFIX_CHARS_PER_TOKEN * enough


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PromptCancelled("cancelled while fitting the prompt")
