"""The one Engine interface: what every Fieldprint engine does, and how to pick one.

Two engines implement it: ``ref`` (`fieldprint_ref.engine.RefEngine`, plain PyTorch over
`spec`) and ``fast`` (`fieldprint_fast.engine.FastEngine`, the same loop over
`fieldprint_fast.ops`).  Both must produce identical tokens, logits and KV page bytes; swap them
with one flag: ``select_engine("ref" | "fast")`` or ``fieldprint generate --engine``.

Contract (every engine, every method):

* **Model.**  An engine is built over one ``spec.model.QuantizedModel`` (``load_engine`` also
  accepts a model artifact directory) and owns one ``spec.attention.KVPool`` of ``num_pages``
  physical pages of ``spec.constants.PAGE_TOKENS`` tokens each.
* **Positions.**  Anchor token ``j`` has RoPE position ``j``; context token ``i`` of a sequence
  has position ``A + i`` (``A`` = anchor length, 0 without anchors).  ``A + len(prompt)`` must
  not exceed ``config.max_position`` (else ``ContextTooLongError``); generation stops with
  ``finish_reason == "max_position"`` when no position is left to feed the last token.
* **Anchors.**  ``set_anchors`` runs the anchor tokens once as an ordinary chunk into freshly
  allocated *pinned* pages.  Every sequence created afterwards sees them (unless it passes
  ``anchors=None``); they are shared, never evicted, never rewritten, and never freed while a
  sequence or the engine still holds them.
* **Paging.**  Each sequence has a block table (logical block ``b`` holds context tokens
  ``[16b, 16b+16)``).  With ``window=W`` a query at context index ``i`` sees context keys
  ``[i-W+1, i]`` plus all anchors; a block no future query can see is freed and its entry set
  to ``-1`` before the next forward.  ``window`` defaults to the model's committed
  ``config.sliding_window`` (None for full-attention models); passing a value (``None`` = full
  attention) overrides the model's window, and a ledger records the override.  Running out of pages raises ``OutOfPagesError``.
* **Batching.**  All sequences given to one ``step`` go through a single ``spec.model.forward``
  call (one ``SequenceChunk`` each).  Results never depend on batching, page placement or
  prefill chunking: a sequence's tokens, logits and page bytes are a function of its model,
  anchors, prompt, window and sampling parameters only.
* **Sampling.**  Token ``s`` of a sequence is ``spec.sampling.sample(logits, params,
  sequence, s, attempt)`` where ``sequence`` is the caller-chosen sequence index (default:
  the prompt's index in ``generate``), never its slot in a batch.
* **Records.**  Every sampled token yields a ``StepRecord`` (fed tokens, page writes with
  physical id/logical block/slots/full flag, pages evicted, int64 logits, token); ``on_step``
  callbacks receive it while the pool still holds exactly what it describes.  ``logits`` is a
  tensor on the engine's device (a GPU engine need not copy the vocabulary row to the host);
  ``logits_digest``, when not None, is ``spec.commits.logits_digest`` of that row, computed by
  the engine where the row lives (the fast engine hashes it on the GPU), and consumers such as
  the verifying runtime use it instead of hashing ``logits`` themselves.
* **Rounds ahead.**  An engine may launch the next round of a ``step``'s sequences before
  ``step`` returns (the fast engine inside ``generate``, or built with ``overlap=True``), so
  that the device works while the host builds records. The next ``step`` takes what it asks
  for; any other method first discards the rest, so records, block tables and page bytes seen
  through the engine's methods are those of a plain round-by-round run. Only ``engine.pool``
  read directly between two rounds may show the next token's K/V slot.
* **Errors.**  Bad user input raises ``fieldprint_ref.errors.EngineError`` subclasses (or
  ``fieldprint.errors.FieldprintError`` from loading) with a message naming the field.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch

from fieldprint_ref.errors import ContextTooLongError, EngineError, OutOfPagesError, PagingError, SamplingParamError
from fieldprint_ref.records import AnchorInfo, GenerationResult, PageWrite, StepRecord

__all__ = [
    "ENGINES",
    "AnchorInfo",
    "ContextTooLongError",
    "Engine",
    "EngineError",
    "GenerationResult",
    "OutOfPagesError",
    "PageWrite",
    "PagingError",
    "SamplingParamError",
    "StepRecord",
    "eos_token_ids",
    "load_engine",
    "select_engine",
]

ENGINES: dict[str, str] = {
    "ref": "fieldprint_ref.engine:RefEngine",
    "fast": "fieldprint_fast.engine:FastEngine",
}


@runtime_checkable
class Engine(Protocol):
    """What every engine provides.  Construct with ``EngineClass(model, tokenizer=..., ...)``."""

    name: str  # "ref" | "fast"
    model: object  # spec.model.QuantizedModel
    pool: object  # spec.attention.KVPool
    tokenizer: object | None  # tokenizers.Tokenizer, or None (token ids only)
    page_tokens: int  # spec.constants.PAGE_TOKENS
    eos_token_ids: frozenset[int]  # default end-of-sequence ids of new sequences
    device: torch.device

    def __init__(
        self,
        model,
        *,
        tokenizer=None,
        num_pages: int | None = None,
        device: str | torch.device = "cpu",
        page_order: Sequence[int] | None = None,
        page_seed: int | None = None,
        eos_token_ids: Iterable[int] = (),
        keep_logits: bool = True,
    ) -> None:
        """Own ``model`` (moved to ``device``) and a zeroed pool of ``num_pages`` pages.

        ``page_order``/``page_seed`` fix the order of the free list (tests use it to place
        pages anywhere in the pool); ``eos_token_ids`` end a sequence when sampled;
        ``keep_logits=False`` drops each step's logits from stored results once the step has
        been returned (and passed to ``on_step``), for long runs over large vocabularies.
        """

    # -- anchors ---------------------------------------------------------------------------
    def set_anchors(self, anchors: str | Sequence[int] | None) -> AnchorInfo | None:
        """Compute the anchors' K/V once into pinned pages and make them the default of new
        sequences (``None`` removes the default); the previous default set is released."""

    def add_anchors(self, anchors: str | Sequence[int]) -> AnchorInfo:
        """Compute an extra anchor set (not the default); pass it as ``anchors=`` to use it."""

    def release_anchors(self, info: AnchorInfo) -> None:
        """Unpin an anchor set; its pages are freed once no sequence holds them."""

    # -- sequences and rounds ----------------------------------------------------------------
    def add_sequence(
        self,
        prompt: str | Sequence[int],
        *,
        sampling=None,
        max_new_tokens: int = 16,
        sequence: int | None = None,
        anchors=...,
        window=...,
        stop: Sequence[str] = (),
        eos_token_ids: Iterable[int] | None = None,
    ) -> int:
        """Validate and register a sequence (nothing runs yet); return its handle."""

    def prefill(self, handles: Sequence[int], *, chunk_size: int | None = None) -> dict[int, StepRecord]:
        """Feed every prompt (batched; at most ``chunk_size`` tokens per sequence per forward)
        and sample each sequence's first token; return the step-0 records."""

    def decode(self, handles: Sequence[int]) -> dict[int, StepRecord]:
        """Feed each sequence's last sampled token (one batched forward) and sample the next."""

    def step(self, handles: Sequence[int], *, chunk_size: int | None = None) -> list[tuple[int, StepRecord]]:
        """One round: a single forward over every unfinished sequence's next chunk, then
        sample where a sequence's context is fully cached."""

    def generate(
        self,
        prompts,
        *,
        sampling=None,
        max_new_tokens: int = 16,
        anchors=...,
        window=...,
        stop: Sequence[str] = (),
        eos_token_ids: Iterable[int] | None = None,
        chunk_size: int | None = None,
        sequences: Sequence[int] | None = None,
        on_step: Callable[[int, StepRecord], None] | None = None,
        release: bool = True,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate for one prompt or a batch until EOS, a stop string, ``max_new_tokens`` or
        ``max_position``; return tokens, text and one ``StepRecord`` per token."""

    def teacher_force(self, handle: int, tokens: Sequence[int], *, max_tokens: int | None = None) -> list[StepRecord]:
        """Run the sequence as if it had sampled ``tokens`` next, in one forward (a replay's
        prefill): one record per token consumed, equal to the record a token-by-token run makes,
        with ``token`` = what the sampler draws there. Stops at a finish, after ``max_tokens``,
        or before a step whose sliding window frees a block; call again for the rest."""

    def fork(self, handle: int, *, sequence: int | None = None, sampling=None, step: int | None = None) -> int:
        """Return a new sequence sharing ``handle``'s pages copy-on-write (``step``: as it stood
        right after token ``step``, for a replay whose ``teacher_force`` ran ahead)."""

    def set_attempt(self, handle: int, attempt: int) -> None:
        """Sample the sequence's next tokens with RNG counter ``attempt`` (a rollback's retry)."""

    def finish_reason(self, handle: int) -> str | None:
        """Return why a sequence finished ("eos", "stop", "length", "max_position"), or None."""

    def release(self, handle: int) -> list[int]:
        """Free a sequence's pages and its hold on its anchors; return the pages freed."""

    def result(self, handle: int) -> GenerationResult:
        """Return what a sequence has produced so far."""

    # -- page access -------------------------------------------------------------------------
    def page_bytes(self, page: int) -> bytes:
        """Return physical page ``page``'s canonical bytes (``KVPool.page_bytes``)."""

    def page_tensor(self, page: int) -> torch.Tensor:
        """Return physical page ``page`` of the pool as a tensor view."""

    def block_table(self, handle: int) -> list[int]:
        """Return a sequence's logical block -> physical page table (-1 = evicted)."""

    def sequence_pages(self, handle: int) -> dict[int, bytes]:
        """Return ``{logical block: page bytes}`` for a sequence's blocks still in the pool."""

    def page_log(self, handle: int) -> list[tuple[int, PageWrite]]:
        """Return every page write of a sequence as ``(step, write)``, in order."""

    # -- text --------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokenize with the model's tokenizer."""

    def detokenize(self, tokens: Sequence[int]) -> str | None:
        """Detokenize (special tokens skipped); ``None`` without a tokenizer."""


def select_engine(name: str) -> type:
    """Return the engine class registered as ``name`` ("ref" or "fast")."""
    if name not in ENGINES:
        raise EngineError(f"engine: unknown engine {name!r} (choose one of {', '.join(sorted(ENGINES))})")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


# Tokens that end generation when the artifact names none (first match in the vocabulary wins).
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<eos>")


def eos_token_ids(tokenizer, manifest: dict | None = None) -> list[int]:
    """Return the end-of-sequence ids: the manifest's ``eos_token_ids``, else known EOS tokens."""
    if manifest:
        for key in ("eos_token_ids", "eos_token_id"):
            v = manifest.get(key) if isinstance(manifest, dict) else None
            if v is not None and v != []:
                return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    if tokenizer is None:
        return []
    ids = [tokenizer.token_to_id(t) for t in _EOS_CANDIDATES]
    return [i for i in ids if i is not None]


def load_engine(name: str, model=None, **kwargs):
    """Build engine ``name`` over a QuantizedModel, a loaded artifact, or an artifact directory.

    ``model=None`` uses the embedded demo model (``fieldprint.demo.ensure_demo_model``).
    Keyword arguments go to the engine constructor; tokenizer and EOS ids come from the
    artifact unless given.
    """
    cls = select_engine(name)
    if model is None:
        from fieldprint.demo import ensure_demo_model

        model = ensure_demo_model()
    if isinstance(model, (str, Path)):
        from fieldprint.artifact import load_artifact

        model = load_artifact(model)
    if hasattr(model, "model") and hasattr(model, "tokenizer"):  # a LoadedArtifact
        art = model
        kwargs.setdefault("tokenizer", art.tokenizer)
        kwargs.setdefault("eos_token_ids", eos_token_ids(art.tokenizer, getattr(art, "manifest", None)))
        model = art.model
    return cls(model, **kwargs)
