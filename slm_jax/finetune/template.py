"""Chat templates: how a prompt/completion pair is laid out as text before tokenisation (no Jinja).

A template is two strings with one placeholder each: ``prompt`` holds ``{prompt}`` once (the
text around it are the prompt's markers), ``completion`` starts with ``{completion}`` and what
follows it is the **end marker**, scored with the completion so the model learns to stop and
where ``slm generate`` and ``slm eval`` cut a generation. Placeholders are replaced literally,
so other braces are plain text. ``plain`` (prompt + completion, no end marker) is the default;
a run directory with a template stores it as ``chat_template.json`` (absent means plain).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from slm_jax.errors import ConfigError, DataError

TEMPLATE_FILE = "chat_template.json"
PROMPT, COMPLETION = "{prompt}", "{completion}"


@dataclass(frozen=True)
class ChatTemplate:
    """``prompt`` contains ``{prompt}`` once; ``completion`` is ``{completion}`` followed by the end marker."""

    prompt: str
    completion: str
    name: str = "custom"

    def __post_init__(self):
        if not isinstance(self.prompt, str) or self.prompt.count(PROMPT) != 1:
            raise ConfigError(
                f"Template {self.name!r}: its prompt must contain {PROMPT} exactly once, got {self.prompt!r}; fix it."
            )
        if not isinstance(self.completion, str) or not self.completion.startswith(COMPLETION):
            raise ConfigError(
                f"Template {self.name!r}: its completion must start with {COMPLETION} (put markers before the answer "
                f"at the end of the prompt), got {self.completion!r}; fix it."
            )
        if COMPLETION in self.end or PROMPT in self.end:
            raise ConfigError(
                f"Template {self.name!r}: the end marker {self.end!r} contains a placeholder; use each one once."
            )

    @property
    def end(self) -> str:
        """The end marker: the completion template after ``{completion}`` ("" for none)."""
        return self.completion[len(COMPLETION) :]

    @property
    def is_plain(self) -> bool:
        return self.prompt == PROMPT and self.completion == COMPLETION

    def format_prompt(self, text: str) -> str:
        return self.prompt.replace(PROMPT, text)

    def format_completion(self, text: str) -> str:
        return text + self.end

    def markers(self) -> str:
        """Every character the template adds around the user's text."""
        return self.prompt.replace(PROMPT, "") + self.end


BUILTIN = {
    "plain": ChatTemplate(PROMPT, COMPLETION, "plain"),
    # Only characters of ordinary English text, so a char tokenizer trained on prose can encode it.
    "qa": ChatTemplate("Q: {prompt}\nA: ", "{completion}\n", "qa"),
    "chatml": ChatTemplate(
        "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", "{completion}<|im_end|>", "chatml"
    ),
    "alpaca": ChatTemplate("### Instruction:\n{prompt}\n\n### Response:\n", "{completion}\n### End", "alpaca"),
}
PLAIN = BUILTIN["plain"]


def resolve_template(name_or_file: str) -> ChatTemplate:
    """A built-in template by name, or one read from a JSON/YAML file ``{"prompt": ..., "completion": ...}``."""
    if name_or_file in BUILTIN:
        return BUILTIN[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise ConfigError(
            f"Unknown template {name_or_file!r}; use one of {', '.join(BUILTIN)} or a JSON/YAML file with "
            '"prompt" and "completion" fields.'
        )
    return read_template(path)


def read_template(path: str | Path) -> ChatTemplate:
    """The template in a JSON or YAML file (YAML is a superset of JSON, so one parser reads both)."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise ConfigError(f"Template file {path} is neither JSON nor YAML; fix its syntax.") from None
    if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not isinstance(d.get("completion"), str):
        raise ConfigError(f'Template file {path} needs string "prompt" and "completion" fields; add both.')
    return ChatTemplate(d["prompt"], d["completion"], str(d.get("name", path.stem)))


def save_template(run_dir: str | Path, template: ChatTemplate) -> None:
    """Store ``template`` as ``run_dir/chat_template.json``; plain is not stored (absence means plain)."""
    if not template.is_plain:
        (Path(run_dir) / TEMPLATE_FILE).write_text(json.dumps(asdict(template), indent=1))


def run_template(run_dir: str | Path) -> ChatTemplate:
    """The template stored in ``run_dir`` (plain when there is none)."""
    path = Path(run_dir) / TEMPLATE_FILE
    return read_template(path) if path.is_file() else PLAIN


def check_encodable(template: ChatTemplate, tokenizer: Any) -> None:
    """Refuse a template whose markers have characters the tokenizer cannot encode (a char vocabulary)."""
    missing = []
    for ch in dict.fromkeys(template.markers()):
        try:
            tokenizer.encode(ch)
        except DataError:
            missing.append(ch)
    if missing:
        raise DataError(
            f"Template {template.name!r} uses characters the run's tokenizer cannot encode "
            f"({', '.join(map(repr, missing))}); pick a template made of characters of its corpus, e.g. qa or plain."
        )


def format_examples(template: ChatTemplate, examples: list[dict[str, str]], source: str | Path) -> list[dict[str, str]]:
    """Prompt/completion pairs (read from ``source``) laid out by ``template``; a completion containing the end marker
    is refused."""
    for i, ex in enumerate(examples):
        if template.end and template.end in ex["completion"]:
            raise DataError(
                f"Example {i + 1} of {source} has a completion that contains the end marker {template.end!r} "
                f"of template {template.name!r}, so the model would learn to stop early; pick another template."
            )
    return [
        {"prompt": template.format_prompt(e["prompt"]), "completion": template.format_completion(e["completion"])}
        for e in examples
    ]


def until_end(pieces: Iterable[str], end: str) -> Iterator[str]:
    """The text of ``pieces`` (a stream of decoded chunks) up to the first ``end`` marker, which is not yielded.

    Holds back the last ``len(end) - 1`` characters until it knows they do not start the marker; an empty ``end``
    passes every piece through.
    """
    if not end:
        yield from pieces
        return
    buffer, hold = "", len(end) - 1
    for piece in pieces:
        buffer += piece
        cut = buffer.find(end)
        if cut >= 0:
            yield buffer[:cut]
            return
        if len(buffer) > hold:
            yield buffer[: len(buffer) - hold]
            buffer = buffer[len(buffer) - hold :]
    yield buffer


def cut_at_end(text: str, end: str) -> str:
    """``text`` before the first ``end`` marker (all of it when ``end`` is empty or absent)."""
    return text.split(end, 1)[0] if end else text
