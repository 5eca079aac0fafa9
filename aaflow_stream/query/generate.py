"""The generation hook: a question and its bounded context -> an answer with its citations.

``Generator`` is what the gateway calls: in a worker thread when it says it ``blocks`` (it
waits on a model), else on the gateway's loop (a thread hop and a GIL hand-over cost more
than the extractive generator's tens of microseconds). Two are built in, chosen by the
topology's ``answer.generator``:

* ``ExtractiveGenerator`` (``kind: extractive``, the default): no model. The answer is the
  context's best sentences for the question: each sentence scored by how many of the
  question's distinct words it holds (ties: earlier first), the best ``sentences`` kept and
  put back in context order. Deterministic: the same context gives the same answer.
* ``OpenAIChatGenerator`` (``kind: openai``): an OpenAI-compatible chat-completions endpoint
  (what vLLM, llama.cpp's server and Ollama serve) at ``url``; the context goes in the user
  message, numbered, and the model is asked to cite by number; the citations are the pieces
  whose numbers the answer cites (all pieces when it cites none). The API key, if any, is read
  from the environment variable the topology names, never from the topology itself.

A generator that fails raises ``GenerationFailed`` (a typed error the gateway answers with).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Final, Protocol

import msgspec

from ..errors import GenerationFailed
from ..spec import ExtractiveSpec, GeneratorSpec, OpenAIChatSpec
from .protocol import Citation
from .reason import Context

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_WORD = re.compile(r"\w+", re.UNICODE)
_CITED = re.compile(r"\[(\d{1,3})\]")
MAX_REPLY_BYTES: Final = 4 * 2**20


class Generated(msgspec.Struct, frozen=True):
    text: str
    citations: list[Citation]


class Generator(Protocol):
    @property
    def blocks(self) -> bool:
        """Whether ``generate`` may wait (on a model, a network): then it runs in a thread."""
        ...

    def generate(self, question: str, context: Context) -> Generated: ...


class ExtractiveGenerator:
    blocks = False  # pure computation, short

    def __init__(self, sentences: int = 3) -> None:
        self._sentences = sentences

    def generate(self, question: str, context: Context) -> Generated:
        wanted = _words(question)
        found: list[tuple[int, int, int, str]] = []  # (-score, piece, position, sentence)
        for p, piece in enumerate(context.pieces):
            for s, match in enumerate(_SENTENCE.finditer(piece.text)):
                sentence = match.group(0).strip()
                if sentence:
                    found.append((-len(_words(sentence) & wanted), p, s, sentence))
        best = sorted(found)[: self._sentences]
        best.sort(key=lambda f: (f[1], f[2]))  # back in context order
        cited = sorted({f[1] for f in best})
        return Generated(
            text=" ".join(f[3] for f in best),
            citations=[context.pieces[p].citation for p in cited],
        )


def _words(text: str) -> set[str]:
    """The distinct lower-cased words of ``text``."""
    if text.isascii():  # lower-casing first changes no word boundary there, and is cheaper
        return set(_WORD.findall(text.lower()))
    return {w.lower() for w in _WORD.findall(text)}


class OpenAIChatGenerator:
    blocks = True  # an HTTP request to the model's server

    def __init__(self, spec: OpenAIChatSpec) -> None:
        self._spec = spec
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""

    def generate(self, question: str, context: Context) -> Generated:
        spec = self._spec
        body = {
            "model": spec.model,
            "max_tokens": spec.max_tokens,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": spec.system},
                {
                    "role": "user",
                    "content": f"Context:\n{context.render()}\n\nQuestion: {question}",
                },
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(
            spec.url.rstrip("/") + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=spec.timeout_s) as response:
                raw = response.read(MAX_REPLY_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise GenerationFailed(f"the chat endpoint {spec.url} failed: {exc}") from exc
        if len(raw) > MAX_REPLY_BYTES:
            raise GenerationFailed(f"the chat endpoint's reply is over {MAX_REPLY_BYTES} bytes")
        try:
            text = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationFailed(f"the chat endpoint's reply has no answer: {exc}") from exc
        if not isinstance(text, str):
            raise GenerationFailed("the chat endpoint's answer is not text")
        numbers = sorted({int(n) for n in _CITED.findall(text)})
        cited = [context.pieces[n - 1].citation for n in numbers if 1 <= n <= len(context.pieces)]
        return Generated(text=text, citations=cited or [p.citation for p in context.pieces])


def build(spec: GeneratorSpec) -> Generator:
    if isinstance(spec, ExtractiveSpec):
        return ExtractiveGenerator(spec.sentences)
    return OpenAIChatGenerator(spec)
