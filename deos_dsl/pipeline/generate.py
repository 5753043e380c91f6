"""Generate with an emitted model: the plan applied at prefill, then decoding on the REDUCED cache.

A prefill returns the logits and one `(key, value, visible)` per decoder layer, as one flat
tuple of tensors (`Prefill.forward`, what a `.pt2` program returns):
- `GraphPrefill`: the emitted graph with its decoder layers' caches exposed
  (`passes/expose_cache.py`): layer `l` caches only the `T_l` tokens that reached it (kept or
  merged ones), each with RoPE applied at its ORIGINAL position;
- `EagerPrefill`: an HF model's own forward with `use_cache=True` (the dense model, or an emitted
  model whose reduction sits before an eager decoder: vision-tower sites, which hand the decoder
  fewer image placeholders, `CompactImageTokens`).

`Generator.generate` then decodes greedily with the checkpoint's OWN language model and output
layer (shared weights; nothing is re-traced): the caches fill an HF `DynamicCache` (its layers
may hold different numbers of tokens), and each layer attends through `reduced_cache_attention`
(registered with transformers' `AttentionInterface` as `deos_reduced_cache`), which masks the
prompt's keys by that layer's `visible` row and shows every decoded token.

Position rule (RoPE and M-RoPE): a decoded token takes the position the DENSE model gives it.
Token `i` after the prompt of row `b` takes `1 + max(prompt positions of row b) + i`: the row's
real (unpadded) length plus `i` when the model numbers tokens by index (LLaVA), every component
of the largest M-RoPE position plus one plus `i` when the prefill takes `position_ids` (Qwen2-VL's
prelude). Reduced tokens keep their original positions, so the positions of a reduced cache have
gaps, as in FastV; a model fed fewer image placeholders (`CompactImageTokens`) numbers the
compacted sequence, so its decoded tokens continue that numbering.

Prompts may be right-padded (`attention_mask` zeros at the end of a row): each row's first
token comes from its last real token, pads stay in the cache but no decoded token sees them.
Every row of a batch must put its image tokens at the same positions (the plan's spans).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn
from torch.export import Dim
from torch.nn import functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from deos_dsl.compiler.image_tokens import SEQUENCE_INPUTS, CompactImageTokens
from deos_dsl.compiler.models import LoadedModel
from deos_dsl.compiler.trace import language_model_of
from deos_dsl.data import ChatEncoder, read_jsonl
from deos_dsl.errors import DeosCompileError, first_line
from deos_dsl.passes.expose_cache import expose_cache

from .emit import Emitted, load_program, model_of_plan, read_plan, write_artifacts

ATTENTION = "deos_reduced_cache"
PREFILL = "prefill.pt2"
POSITION_RULE = ("a decoded token takes the position the dense model gives it: 1 + the largest position of the "
                 "row's real prompt tokens (every M-RoPE component), + 1 per token decoded before it; cached tokens "
                 "keep their original positions")


def reduced_cache_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                            attention_mask: Tensor | None, *, deos_visible: list[Tensor | None],
                            **kwargs: Any) -> tuple[Tensor, Any]:
    """SDPA over one layer's cache: the prompt's keys masked by the layer's `visible` row
    (`None`: all visible), the decoded keys after them all visible; `query` `[B, H, 1, hd]`."""
    visible = deos_visible[module.layer_idx]
    mask = None
    if visible is not None:
        decoded = key.shape[2] - visible.shape[-1]
        shown = torch.ones if visible.dtype == torch.bool else torch.zeros
        tail = shown((*visible.shape[:-1], decoded), dtype=visible.dtype, device=visible.device)
        mask = torch.cat([visible, tail], dim=-1)
    return sdpa_attention_forward(module, query, key, value, mask, is_causal=False, **kwargs)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The model-level mask of `deos_reduced_cache`: none, each layer masks by its own row."""
    return None


AttentionInterface.register(ATTENTION, reduced_cache_attention)
AttentionMaskInterface.register(ATTENTION, _no_mask)


def groups_of(model: nn.Module) -> int:
    """Query heads per key-value head of `model`'s language model (GQA's repetition; 1 for MHA)."""
    text = model.config.get_text_config()
    return text.num_attention_heads // (getattr(text, "num_key_value_heads", None) or text.num_attention_heads)


def cache_keyword(module: nn.Module) -> str:
    """The keyword `module.forward` takes its cache by: `cache` (transformers >= 5.25) or
    `past_key_values` (earlier releases)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _logits(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output[0] if isinstance(output, tuple) else output.logits


def compactor(module: nn.Module) -> CompactImageTokens | None:
    """The placeholder compaction of an emitted vision-site model (weights not held), or None."""
    if not isinstance(module, CompactImageTokens):
        return None
    return CompactImageTokens(nn.Identity(), module.token_id, module.placeholders, module.features)


class Prefill(nn.Module):
    """`forward(**inputs) -> (logits [B, T', V], key_0, value_0, visible_0, key_1, ...)` (a flat
    tuple of tensors: what a `.pt2` program returns); `compact` the placeholder compaction the
    decoder's inputs went through (None: the inputs as given)."""

    compact: CompactImageTokens | None

    def prepare(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs as the prefill takes them (a static program: padded to its length)."""
        return inputs

    def decoder_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the decoder was called with: `inputs`, fewer placeholders after vision sites."""
        return self.compact.compact(inputs) if self.compact is not None else inputs


class GraphPrefill(Prefill):
    """An emitted graph whose decoder layers' caches are outputs (`expose_cache` on a copy:
    the emitted graph itself is not edited)."""

    def __init__(self, emitted: Emitted, groups: int) -> None:
        super().__init__()
        if not emitted.decoder_attentions:
            raise DeosCompileError(f"the emitted `{emitted.space_name}` on {emitted.model_name} has no traced decoder "
                                   "attention to take a cache from", "generate with an HF generative model")
        graph, copies = fx.Graph(), {}
        graph._codegen = copy.copy(emitted.graph_module.graph._codegen)  # expose_cache replaces its output spec
        graph.output(graph.graph_copy(emitted.graph_module.graph, copies))
        self.graph_module = fx.GraphModule(emitted.graph_module, graph)
        expose_cache(self.graph_module, [copies[node] for node in emitted.decoder_attentions],
                     [groups] * len(emitted.decoder_attentions))
        self.compact = compactor(emitted.module)

    def forward(self, **inputs: Any) -> tuple[Tensor, ...]:
        output, cache = self.graph_module(**self.decoder_inputs(inputs))
        return (_logits(output), *(tensor for layer in cache for tensor in layer))


class EagerPrefill(Prefill):
    """An HF model's own forward with `use_cache=True` (the dense model, or an emitted vision-site
    model: `CompactImageTokens` around the model with its vision stack reduced)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.module if isinstance(model, CompactImageTokens) else model
        self.compact = compactor(model)

    def forward(self, **inputs: Any) -> tuple[Tensor, ...]:
        inputs = self.decoder_inputs(inputs)
        output = self.model(**inputs, use_cache=True)
        cache, mask = getattr(output, "cache", None) or output.past_key_values, inputs.get("attention_mask")
        flat: list[Tensor] = [output.logits]
        for layer in cache.layers:
            keys = layer.keys
            visible = mask[:, None, None, :].bool() if mask is not None else \
                torch.ones(keys.shape[0], 1, 1, keys.shape[2], dtype=torch.bool, device=keys.device)
            flat += [keys, layer.values, visible]
        return tuple(flat)


class Positional(nn.Module):
    """`prefill` called with its inputs in the order `names`, positionally: what the `.pt2` holds
    (torch.export takes dynamic shapes for positional inputs, not for a `**kwargs` forward)."""

    def __init__(self, prefill: Prefill, names: list[str]) -> None:
        super().__init__()
        self.prefill, self.names = prefill, names

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return self.prefill(**dict(zip(self.names, tensors)))


class ProgramPrefill(Prefill):
    """A reloaded `prefill.pt2` (`program`, inputs `shapes`: name -> example shape, in call
    order; `dynamic`: any prompt length, else right-padded to the example's) and its compaction
    (None, or `(image token id, placeholders, features)` from plan.json)."""

    def __init__(self, program: nn.Module, compact: tuple[int, int, int] | None, shapes: dict[str, list[int]],
                 dynamic: bool) -> None:
        super().__init__()
        self.program, self.shapes, self.dynamic = program, shapes, dynamic
        self.compact = None if compact is None else CompactImageTokens(nn.Identity(), *compact)

    def prepare(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Every input the program takes; a static program's `input_ids` / `attention_mask`
        right-padded (pad id 0, mask 0) to its length."""
        batch, length = self.shapes["input_ids"]
        ids = inputs["input_ids"]
        if ids.shape[0] != batch or (not self.dynamic and ids.shape[1] > length):
            most = "" if self.dynamic else f" of at most {length} tokens"
            raise DeosCompileError(f"the prefill program takes {batch} prompt(s){most}, not {ids.shape[0]} of "
                                   f"{ids.shape[1]}", "emit again with --batch (and example inputs of that length)")
        mask = inputs.get("attention_mask", torch.ones_like(ids))
        pad = 0 if self.dynamic else length - ids.shape[1]
        padded = {**inputs, "input_ids": F.pad(ids, (0, pad)), "attention_mask": F.pad(mask, (0, pad))}
        missing = set(self.shapes) - set(padded)
        if missing:
            raise DeosCompileError(f"the prefill program also takes {sorted(missing)}", "pass the processor's outputs")
        return {name: padded[name] for name in self.shapes}

    def forward(self, **inputs: Any) -> tuple[Tensor, ...]:
        return tuple(self.program(*(inputs[name] for name in self.shapes)))


@dataclass
class Generated:
    """Greedy tokens `[B, n]` (after a row's end token: the end token again) and the tokens each
    decoder layer cached at prefill."""

    tokens: Tensor
    cache_lengths: list[int]


class Generator:
    """Prefill with `prefill`, decode with `model`'s own language model and output layer
    (module docstring); `prelude` maps processor inputs to the prefill's (split models)."""

    def __init__(self, prefill: Prefill, model: nn.Module, prelude: Any = None) -> None:
        language_model, head, embed = _decoder_parts(model)
        self.prefill, self.prelude = prefill, prelude
        self.language_model, self.head, self.embed = language_model, head, embed
        self.cache_keyword = cache_keyword(language_model)

    @torch.no_grad()
    def start(self, inputs: dict[str, Any]) -> tuple[Tensor, DynamicCache, list[Tensor | None], Tensor]:
        """Prefill: (first logits `[B, V]`, the cache, per-layer visible rows, next positions `[B, R]`)."""
        if self.prelude is not None:
            inputs = self.prelude(inputs)
        inputs = self.prefill.prepare(inputs)
        flat = self.prefill(**inputs)
        inputs = self.prefill.decoder_inputs(inputs)
        logits = flat[0]
        caches = [tuple(flat[i:i + 3]) for i in range(1, len(flat), 3)]
        mask, length = inputs.get("attention_mask"), inputs["input_ids"].shape[1]
        real = torch.full((logits.shape[0],), length, device=logits.device) if mask is None else mask.sum(dim=1)
        removed = length - logits.shape[1]  # tokens the plan removed, all before the row's text
        last = logits[torch.arange(logits.shape[0], device=logits.device), real - 1 - removed]
        positions = inputs.get("position_ids")
        if positions is None:
            after = real[:, None]
        else:  # [B, T] or M-RoPE [B, T, R]: one more than the largest position of a real token
            grid = positions if positions.ndim == 3 else positions[..., None]
            seen = torch.arange(length, device=grid.device)[None, :] < real[:, None]
            after = grid.masked_fill(~seen[..., None], torch.iinfo(grid.dtype).min).amax(dim=1) + 1
        cache = DynamicCache()
        rows = []
        for index, (key, value, visible) in enumerate(caches):
            cache.update(key, value, index)
            rows.append(None if visible.dtype == torch.bool and bool(visible.all()) else visible)
        return last, cache, rows, after

    @torch.no_grad()
    def step(self, tokens: Tensor, cache: DynamicCache, rows: list[Tensor | None], positions: Tensor) -> Tensor:
        """One decode step: `tokens` `[B]` at `positions` `[B, R]` -> next logits `[B, V]` (the
        language model's attention switched to `deos_reduced_cache` for the step)."""
        position_ids = positions if positions.shape[1] == 1 else positions.permute(1, 0)[:, :, None]
        config = self.language_model.config
        implementation = config._attn_implementation
        config._attn_implementation = ATTENTION
        try:
            hidden = self.language_model(inputs_embeds=self.embed(tokens[:, None]), position_ids=position_ids,
                                         use_cache=True, deos_visible=rows, **{self.cache_keyword: cache})[0]
        finally:
            config._attn_implementation = implementation
        return self.head(hidden[:, -1])

    @torch.no_grad()
    def generate(self, inputs: dict[str, Any], max_new_tokens: int, eos_token_id: int | None = None) -> Generated:
        """Greedy decoding of `max_new_tokens` tokens per row (module docstring)."""
        logits, cache, rows, positions = self.start(inputs)
        lengths = [layer.keys.shape[2] for layer in cache.layers]
        tokens = [logits.argmax(-1)]
        done = tokens[0] == eos_token_id if eos_token_id is not None else torch.zeros_like(tokens[0], dtype=torch.bool)
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            logits = self.step(tokens[-1], cache, rows, positions)
            positions = positions + 1
            chosen = torch.where(done, tokens[-1], logits.argmax(-1))
            tokens.append(chosen)
            if eos_token_id is not None:
                done = done | (chosen == eos_token_id)
        return Generated(torch.stack(tokens, dim=1), lengths)


def _decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(language model, output layer, input embeddings) of an HF generative model, or of a split
    model's `LanguageHead` (`compiler/prelude.py`); `DeosCompileError` when it has none."""
    language_model = language_model_of(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else getattr(model, "head", None)
    embed = language_model.get_input_embeddings() if language_model is not None else None
    if language_model is None or head is None or embed is None:
        raise DeosCompileError(f"{type(model).__name__} has no language model, input embeddings and output layer to "
                               "decode with", "generate with an HF generative vision-language model (LLaVA, Qwen2-VL)")
    return language_model, head, embed


def prefill_of(emitted: Emitted, model: nn.Module) -> Prefill:
    """The prefill of `emitted` (`model`: the model it came from): its graph with the caches
    exposed when the decoder is traced, else the eager model it runs (vision-tower sites)."""
    if emitted.decoder_attentions:
        return GraphPrefill(emitted, groups_of(model))
    if isinstance(emitted.module, CompactImageTokens):
        return EagerPrefill(emitted.module)
    raise DeosCompileError(f"the emitted `{emitted.space_name}` on {emitted.model_name} has no decoder whose cache "
                           "generation could keep (no traced decoder attention, no vision-tower route)",
                           "generate with an HF generative vision-language model (LLaVA, Qwen2-VL)")


def generator_of(emitted: Emitted, loaded: LoadedModel) -> Generator:
    """Generate with `emitted`, compiled from `loaded` (in memory: any prompt length the
    emitted graph takes; batch size that of `loaded`'s example inputs)."""
    return Generator(prefill_of(emitted, loaded.model), loaded.model, loaded.prelude)


def dense_generator(loaded: LoadedModel) -> Generator:
    """The dense model generating on its own full cache, called with the processor's inputs (a
    split model: its whole forward, prelude included)."""
    whole = loaded.prelude.model if loaded.prelude is not None else loaded.model
    return Generator(EagerPrefill(whole), loaded.model)


def export_prefill(prefill: Prefill, inputs: dict[str, Any]) -> tuple[torch.export.ExportedProgram, bool]:
    """`prefill` exported on `inputs` (tensors, positionally), the prompt length dynamic where
    the graph allows it, else static; returns the program and whether the length is dynamic."""
    names = [name for name, value in inputs.items() if isinstance(value, Tensor)]
    tensors = tuple(inputs[name] for name in names)
    dynamic = {"tensors": tuple({1: Dim.AUTO} if name in SEQUENCE_INPUTS else None for name in names)}
    try:
        program = torch.export.export(Positional(prefill, names), tensors, dynamic_shapes=dynamic, strict=False)
        length = program.graph_signature.user_inputs[names.index("input_ids")]
        node = next(node for node in program.graph.nodes if node.name == length)
        return program, not isinstance(node.meta["val"].shape[1], int)
    except Exception:  # noqa: BLE001  (a length the model's code fixes: the static export below)
        pass
    try:
        return torch.export.export(Positional(prefill, names), tensors, strict=False), False
    except Exception as error:  # noqa: BLE001  (any export failure is reported with its first line)
        raise DeosCompileError(f"cannot export the generative prefill: {first_line(error)}",
                               "report the model; in Python, deos_dsl.pipeline.generator_of generates without it") \
            from error


def write_generative(emitted: Emitted, loaded: LoadedModel, out: Path) -> list[Path]:
    """`write_artifacts` plus `prefill.pt2` (the prefill returning logits and every layer's
    reduced cache; batch size that of the example inputs, prompt length dynamic where the graph
    allows) and plan.json's `generation` entry (what `load_generator` needs)."""
    prefill = prefill_of(emitted, loaded.model)
    program, dynamic = export_prefill(prefill, emitted.kwargs)
    compact = prefill.compact
    shapes = {name: list(value.shape) for name, value in emitted.kwargs.items() if isinstance(value, Tensor)}
    section = {"prefill": PREFILL, "inputs": shapes, "dynamic_length": dynamic,
               "layers": (len(program.graph_signature.user_outputs) - 1) // 3,
               "compact": None if compact is None else [compact.token_id, compact.placeholders, compact.features],
               "positions": POSITION_RULE}
    return write_artifacts(emitted, out, {PREFILL: program}, {"generation": section})


def _loaded(directory: Path, trust_code: bool) -> tuple[Generator, LoadedModel, dict[str, Any]]:
    plan = read_plan(directory)
    generation = plan.get("generation")
    if not generation:
        raise DeosCompileError(f"{directory} was emitted without a generative prefill", "emit it again with --generate")
    program = load_program(directory, generation["prefill"])
    loaded = model_of_plan(directory, plan, trust_code)
    compact = generation["compact"]
    prefill = ProgramPrefill(program, None if compact is None else tuple(compact), generation["inputs"],
                             generation["dynamic_length"])
    return Generator(prefill, loaded.model, loaded.prelude), loaded, plan


def load_generator(directory: Path, trust_code: bool = False) -> Generator:
    """The generator of an emitted directory written by `write_generative`: its `prefill.pt2` and,
    to decode, the checkpoint plan.json names (loaded with transformers; a `module:` model only
    with `trust_code`). Prompts are right-padded to the program's length."""
    return _loaded(directory, trust_code)[0]


@dataclass(frozen=True)
class Answers:
    """Greedy answers to a dataset's prompts: per example its place (`file:line`), the expected
    answer (None when the data has none), the emitted model's and (optionally) the dense model's
    text; `cache` / `dense_cache` the tokens each decoder layer cached for the first prompt."""

    where: list[str]
    expected: list[str | None]
    emitted: list[str]
    dense: list[str] | None
    cache: list[int]
    dense_cache: list[int] | None


def _texts(tokenizer: Any, tokens: Tensor, eos: int | None) -> list[str]:
    rows = [row.tolist() for row in tokens]
    return [tokenizer.decode(row[:row.index(eos)] if eos in row else row, skip_special_tokens=True).strip()
            for row in rows]


def _run(generator: Generator, encoder: ChatEncoder, rows: int, max_new_tokens: int, eos: int | None,
         step: Callable[[int], None]) -> tuple[list[str], list[int]]:
    """`generator`'s answers to every example of `encoder`, `rows` prompts per call (the last call
    filled up with its last prompt)."""
    texts, cache = [], []
    for start in range(0, len(encoder), rows):
        chosen = list(range(start, min(start + rows, len(encoder))))
        inputs = encoder.batch(chosen + [chosen[-1]] * (rows - len(chosen))).kwargs
        generated = generator.generate(inputs, max_new_tokens, eos)
        texts += _texts(encoder.processor.tokenizer, generated.tokens, eos)[:len(chosen)]
        cache = cache or generated.cache_lengths
        step(len(chosen))
    return texts, cache


def answer_dataset(directory: Path, data: Path, examples: int | None, max_new_tokens: int, dense: bool,
                   trust_code: bool = False, step: Callable[[int], None] = lambda done: None) -> Answers:
    """Generate with the emitted model in `directory` (`write_generative`) on the prompts of the
    JSONL `data` (or a directory holding `data.jsonl`; its first `examples`), and with the dense
    checkpoint too when `dense`; `step` is told how many examples each call finished."""
    generator, loaded, plan = _loaded(directory, trust_code)
    if loaded.processor is None:
        raise DeosCompileError(f"model `{plan['model']}` has no processor to encode prompts with",
                               "emit from a checkpoint directory that holds its processor")
    read = read_jsonl(data / "data.jsonl" if data.is_dir() else data, examples)
    rows, length = plan["generation"]["inputs"]["input_ids"]
    encoder = ChatEncoder(loaded.processor, [replace(example, answer=None) for example in read],
                          length=None if plan["generation"]["dynamic_length"] else length)
    eos = loaded.model.config.get_text_config().eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    emitted, cache = _run(generator, encoder, rows, max_new_tokens, eos, step)
    dense_texts, dense_cache = None, None
    if dense:
        dense_texts, dense_cache = _run(dense_generator(loaded), encoder, rows, max_new_tokens, eos, step)
    return Answers([example.where for example in read], [example.answer for example in read], emitted, dense_texts,
                   cache, dense_cache)
