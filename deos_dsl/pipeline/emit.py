"""Emit a space on a model: the discretised graph as a `torch.export` `.pt2`, its Python code and a plan.

`compile_emitted(space, loaded)` runs the compile pipeline (`deos_dsl.pipeline.compile`): trace,
the block map, `bind` (bind_sites, insert_scores, site modules), `discretise` (discretise, cleanup, verify;
each site's decision from its IR: `activate` on -> gate on, `retain` -> keep count; learned
parameters at their init until a search result exists, or a search's discrete schedule:
`settings`). Where export fixed the sequence length (see
`passes/discretise.py`), in this order:
1. the model is re-traced with `torch.fx.symbolic_trace` when that works (the embedded model);
2. else, when active sites sit on a stack of fixed length, that stack's container (or its
   blocks, chained) is exported alone with a dynamic length and the passes run on that graph
   (`stack_retrace`: HF vision encoders, LLaVA's vision tower; one stack per stage: a LLaVA
   space with vision-tower, projector and decoder sites is emitted in stages, upstream first,
   each on the model the previous stage reduced, `_in_two_stages`). The
   PROJECTOR counts as a one-block stack: a site on a projector whose output length the trace
   fixed (HF LLaVA, where the vision tower fixes it and the features are then split per image
   and scattered over the image placeholders, which graph-level re-binding cannot follow) has
   the projector module exported alone the same way (a proportional projector site is refused:
   its `log size` bias could not reach the decoder). The emitted program is then the WHOLE
   model (a shallow copy) running the reduced graph in the target's place, its decoder fed
   fewer image placeholders when the stack is a vision tower or the projector
   (`image_tokens`); `model.py` is the target's graph, plan.json's tracer the route;
3. else the error lists what was tried.

`write_artifacts(emitted, out)` writes, into a temporary sibling directory renamed onto `out`
only once everything is written (never a half-written `out`):
- `model.pt2`: `torch.export.save` of the emitted model re-exported on the example inputs
  (static shapes: the plan fixes every token count), returning the tensor leaves of the
  model's output as a flat tuple (no library output class to deserialise). It reloads with `torch.export.load` and
  runs with torch alone; every payload is raw tensor data or loads with `weights_only=True`
  (checked by `unsafe_payloads`), so loading never unpickles an arbitrary object;
- `model.py`: the emitted fx graph's generated code (`gm.code`);
- `plan.json`: model, space, tracer, the weights' dtype, and per site its gate, keep count,
  regime parameters and the tokens entering / leaving it; `prelude: true` for a model split
  at its language model (`compiler/prelude.py`): `model.pt2` then holds the language model and
  head, called with the prelude's outputs.

Further programs and plan entries ride along (`write_artifacts(..., programs, plan)`): the
generative prefill `prefill.pt2` and plan.json's `generation` entry (`generate.write_generative`).

`load_emitted(directory)` returns the emitted model called like the model it came from, with the
processor's inputs: the program alone, or (a split model) the checkpoint's own prelude, loaded
with transformers from the directory plan.json names, followed by the program.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from deos_dsl.compiler.blocks import BlockMap, Stack, build_block_map
from deos_dsl.compiler.errors import ReducedModelError, UntraceableModelError
from deos_dsl.compiler.graph_edit import is_sdpa
from deos_dsl.compiler.hard_site import SitePlan
from deos_dsl.compiler.image_tokens import CompactImageTokens, compact_image_tokens
from deos_dsl.compiler.models import LoadedModel, resolve_model
from deos_dsl.compiler.positions import attention_node
from deos_dsl.compiler.stack_retrace import Retraced, downstream_stacks, fixed_lengths, retrace_stack, static_stack
from deos_dsl.compiler.trace import EXPORT, SYMBOLIC, TracedModel, trace
from deos_dsl.errors import DeosCompileError, first_line
from deos_dsl.files import write_directory_atomically
from deos_dsl.frontend import ir

from .compile import Bound, bind, bind_traced, discretise

ARTIFACTS = ("model.pt2", "model.py", "plan.json")


@dataclass
class Emitted:
    """The emitted graph of `space` on `model_name`, with its plans and measured lengths;
    `module(*args, **kwargs)` is what `model.pt2` holds (the graph itself, or the whole model
    around it on the stack re-trace route)."""

    model_name: str
    space_name: str
    traced: TracedModel
    plans: dict[str, SitePlan]
    lengths: dict[str, tuple[int, int]]
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    prelude: bool = False  # the model was split at its language model: `module` takes the prelude's outputs
    decoder_attentions: list[fx.Node] = field(default_factory=list)  # per decoder layer, in `graph_module` (none: eager)

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.traced.graph_module

    def run(self) -> Any:
        """The emitted model's output on the example inputs."""
        return self.module(*self.args, **self.kwargs)

    def plan_json(self) -> dict[str, Any]:
        sites = []
        for name, plan in self.plans.items():
            entry = plan.to_json()
            n_in, n_out = self.lengths.get(name, (None, None))
            entry.update(tokens_in=n_in, tokens_out=n_out)
            sites.append(entry)
        floating = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.float32)
        return {"model": self.model_name, "space": self.space_name, "tracer": self.traced.tracer,
                "dtype": str(floating).removeprefix("torch."), "prelude": self.prelude, "sites": sites}


def _trace_for_emit(loaded: LoadedModel) -> TracedModel:
    traced = trace(loaded.model, loaded.args, loaded.kwargs)
    if traced.tracer == EXPORT and not traced.dynamic_dims:
        try:
            return trace(loaded.model, loaded.args, loaded.kwargs, tracers=(SYMBOLIC,))
        except UntraceableModelError as error:
            traced.failures += error.attempts  # named when no route emits the static graph
    return traced


def _decoder_attentions(block_map: BlockMap) -> list[fx.Node]:
    """The attention node of every decoder block, in layer order (none without a decoder, or
    when a block has no attention to find: then nothing is exposed for generation)."""
    decoder = block_map.stack("decoder")
    found = [attention_node(block) for block in decoder.blocks] if decoder is not None else []
    return found if found and all(node is not None and is_sdpa(node) for node in found) else []


def _whole_model(retraced: Retraced, whole: BlockMap, stack: Stack) -> nn.Module:
    """The user's model running the reduced stack; fewer image placeholders when a vision
    stack or the projector feeds a decoder."""
    reduced = retraced.reduced_model()
    if stack.role in ("vision", "projector") and whole.stack("decoder") is not None:
        return compact_image_tokens(reduced, whole.traced.args, whole.traced.kwargs)
    return reduced


def _refuse_crossing_sizes(bound: Bound) -> None:
    """A proportional projector site's sizes and `log size` bias cross into the decoder (as in
    the relaxed graph); the projector re-trace emits the projector alone, so it refuses them."""
    crossing = [name for name, plan in bound.plans().items() if plan.active and plan.proportional]
    if crossing:
        raise DeosCompileError(f"site `{crossing[0]}`: the projector is emitted by re-tracing it alone, so its "
                               "proportional attention (`log size` bias on the decoder's keys) cannot reach the decoder",
                               "set `proportional: off` on the projector site")


@dataclass(frozen=True)
class Part:
    """The sites of a space on one side of a stack (`inside` it or not): a space of those site
    entries alone, and the renaming of site names between it (`part@j`) and the space (`@i`).
    An entry none of whose sites is active emits nothing and is left out: its blocks need not
    exist in the stage's model (a projector site left off, beside vision-tower sites)."""

    space: ir.Space
    indexes: tuple[int, ...]  # the space's site entries, in the part's order

    @classmethod
    def of(cls, space: ir.Space, bound: Bound, active: set[str], stack: str, inside: bool) -> Part:
        """The entries of `space` (bound as `bound`, its `active` sites) inside `stack` or not."""
        indexes = tuple(sorted({site.site_index for site in bound.sites
                                if (site.block.stack == stack) == inside and site.name in active}))
        straddling = {site.site_index for site in bound.sites if site.block.stack == stack} & \
            {site.site_index for site in bound.sites if site.block.stack != stack}
        if straddling:
            raise DeosCompileError(f"site {min(straddling)} of `{space.name}` selects blocks of `{stack}` and of "
                                   "another stack, which are emitted in separate stages", "write one site per stack")
        return cls(space.model_copy(update={"sites": [space.sites[i] for i in indexes]}), indexes)

    def inward(self, name: str) -> str | None:
        """The part's name of the space's site `name` (None: not in the part)."""
        path, _, index = name.rpartition("@")
        return f"{path}@{self.indexes.index(int(index))}" if int(index) in self.indexes else None

    def outward(self, name: str) -> str:
        path, _, index = name.rpartition("@")
        return f"{path}@{self.indexes[int(index)]}"

    def settings(self, settings: dict[str, ir.SiteSettings] | None) -> dict[str, ir.SiteSettings]:
        return {inner: value for name, value in (settings or {}).items() if (inner := self.inward(name)) is not None}


def _in_two_stages(space: ir.Space, loaded: LoadedModel, bound: Bound, stack: Stack,
                   settings: dict[str, ir.SiteSettings] | None) -> Emitted:
    """A vision / projector stack that feeds stacks with sites of their own (`downstream_stacks`):
    stage 1 emits the stack's sites alone (re-traced, fewer image tokens: `CompactImageTokens`);
    stage 2 emits the other sites on that reduced model, fed the compacted inputs (itself in
    stages when they hold a static stack: vision tower, then projector, then decoder). The
    result takes the original inputs, behind ONE compaction (dropping the last surplus
    placeholders twice is dropping them once); its plans and lengths carry the space's own site
    names."""
    every = bound.plans()
    active = {name for name, plan in every.items() if plan.active}
    first, second = (Part.of(space, bound, active, stack.prefix, inside) for inside in (True, False))
    staged = _emitted(first.space, loaded, first.settings(settings))  # compile_emitted runs the whole result
    whole = staged.module
    assert isinstance(whole, CompactImageTokens)
    decoder = bound.block_map.stack("decoder")
    assert decoder is not None
    # the reduced stack runs as one opaque graph: name the decoder and the projector, which its blocks no longer tell
    projector = {"projector": bound.block_map.projector.path} if bound.block_map.projector is not None else {}
    reduced = LoadedModel(loaded.name, whole.module, kwargs=whole.compact(loaded.kwargs), source=loaded.source,
                          roles={**loaded.roles, "decoder": decoder.prefix, **projector})
    decoded = _emitted(second.space, reduced, second.settings(settings))
    plans = {name: replace(plan, name=name) for part, emitted in ((first, staged), (second, decoded))
             for inner, plan in emitted.plans.items() for name in (part.outward(inner),)}
    lengths = {first.outward(n): v for n, v in staged.lengths.items()} | {second.outward(n): v for n, v in decoded.lengths.items()}
    inner = decoded.module
    if isinstance(inner, CompactImageTokens):  # a later stage compacted again: from what this stage left
        assert inner.placeholders == whole.features, "each stage compacts what the stage before it left"
        module = CompactImageTokens(inner.module, whole.token_id, whole.placeholders, inner.features)
    else:
        module = CompactImageTokens(inner, whole.token_id, whole.placeholders, whole.features)
    ordered = {site.name: plans.get(site.name, every[site.name]) for site in bound.sites}  # an entry left off: its plan
    return Emitted(loaded.name, space.name, decoded.traced, ordered, lengths, module, loaded.args, loaded.kwargs,
                   decoder_attentions=decoded.decoder_attentions)


def compile_emitted(space: ir.Space, loaded: LoadedModel, settings: dict[str, ir.SiteSettings] | None = None) -> Emitted:
    """Run the emit pipeline (module docstring); `settings[site name]` replaces the space's
    settings of that bound site (a searched schedule: fixed gate, keep count and regime). The
    emitted model is run once on the example inputs. Raises `DeosCompileError` / `SpaceError`."""
    emitted = _emitted(space, loaded, settings)
    emitted.prelude = loaded.prelude is not None
    try:
        with torch.no_grad():
            emitted.run()
    except Exception as error:  # noqa: BLE001  (the model's own code, downstream of a site)
        raise ReducedModelError("the emitted model, run on its example inputs,", error) from error
    return emitted


def _emitted(space: ir.Space, loaded: LoadedModel, settings: dict[str, ir.SiteSettings] | None) -> Emitted:
    traced = _trace_for_emit(loaded)
    block_map = build_block_map(traced, loaded.roles, loaded.spans)
    fixed = fixed_lengths(block_map)  # before any pass: fake-tensor propagation may specialise a length
    bound = bind(space, block_map, settings)
    stack = static_stack(block_map, bound.sites, bound.active(), fixed)
    if stack is None:
        plans, lengths = discretise(bound)
        return Emitted(loaded.name, space.name, traced, plans, lengths, traced.graph_module, traced.args, traced.kwargs,
                       decoder_attentions=_decoder_attentions(block_map))
    decoder = block_map.stack("decoder")
    downstream = downstream_stacks(block_map, stack.role)
    if any(site.block.stack in downstream for site in bound.sites):
        return _in_two_stages(space, loaded, bound, stack, settings)
    if stack.role == "projector" and decoder is not None:
        _refuse_crossing_sizes(bound)
    retraced = retrace_stack(block_map, stack)
    plans, lengths = discretise(bind_traced(space, retraced.traced, retraced.roles, retraced.spans, settings))
    return Emitted(loaded.name, space.name, retraced.traced, plans, lengths,
                   _whole_model(retraced, block_map, stack), traced.args, traced.kwargs)


class FlatOutputs(nn.Module):
    """`module` with its output flattened to a tuple of its tensor leaves, so that the exported
    program carries no library output class (loading it then needs torch alone)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(leaf for leaf in pytree.tree_leaves(self.module(*args, **kwargs)) if isinstance(leaf, torch.Tensor))


def export_program(emitted: Emitted) -> torch.export.ExportedProgram:
    """The emitted model, outputs flattened (`FlatOutputs`), re-exported on its example inputs."""
    try:
        return torch.export.export(FlatOutputs(emitted.module), emitted.args, emitted.kwargs, strict=False)
    except Exception as error:  # noqa: BLE001  (any export failure is reported with its first line)
        raise DeosCompileError(f"cannot export the emitted graph: {first_line(error)}",
                               "report the model; the emitted fx code is still available with gm.code") from error


def unsafe_payloads(pt2: Path) -> list[str]:
    """Payloads of a `.pt2` archive that `torch.export.load` would unpickle as arbitrary objects:
    weights / constants stored as pickles, and sample inputs that `weights_only` loading refuses
    (torch then falls back to a full unpickle). An emitted archive has none."""
    found = []
    with zipfile.ZipFile(pt2) as archive:
        for name in archive.namelist():
            if name.endswith(".json") and ("weights_config" in name or "constants_config" in name):
                config = json.loads(archive.read(name)).get("config", {})
                found += [key for key, payload in config.items() if payload.get("use_pickle")]
            elif "/sample_inputs/" in name and archive.read(name):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:  # noqa: BLE001  (any refusal means a full unpickle on load)
                    found.append(name)
    return found


def write_artifacts(emitted: Emitted, out: Path, programs: dict[str, torch.export.ExportedProgram] | None = None,
                    plan: dict[str, Any] | None = None) -> list[Path]:
    """Write `ARTIFACTS` into the new directory `out` atomically, with the further `programs`
    (file name -> program, e.g. a generative prefill) and `plan` entries; returns their paths."""
    if out.exists():
        raise DeosCompileError(f"output directory {out} already exists", "choose a new --out or remove it")
    programs = {"model.pt2": export_program(emitted), **(programs or {})}

    def fill(temp: Path) -> None:
        for name, program in programs.items():
            torch.export.save(program, temp / name)
            unsafe = unsafe_payloads(temp / name)
            if unsafe:
                raise DeosCompileError(f"the exported program stores pickled payloads ({', '.join(unsafe)})",
                                       "report the model: emitted archives must load without unpickling")
        (temp / "model.py").write_text(emitted.graph_module.code, encoding="utf-8")
        (temp / "plan.json").write_text(json.dumps({**emitted.plan_json(), **(plan or {})}, indent=2) + "\n",
                                        encoding="utf-8")

    write_directory_atomically(out, fill)
    return [out / name for name in (*ARTIFACTS, *list(programs)[1:])]


class WithPrelude(nn.Module):
    """An emitted program of a model split at its language model, called with the processor's
    inputs: `program(**prelude(kwargs))`."""

    def __init__(self, program: nn.Module, prelude: Any) -> None:
        super().__init__()
        self.program, self.prelude = program, prelude

    def forward(self, **kwargs: Any) -> Any:
        return self.program(**self.prelude(kwargs))


def _unreadable(directory: Path, error: Exception) -> DeosCompileError:
    return DeosCompileError(f"{directory} holds no readable emitted model ({first_line(error)[:200]})",
                            "emit it again: deos emit")


def read_plan(directory: Path) -> dict[str, Any]:
    """plan.json of an emitted directory; `DeosCompileError` for a missing or corrupt one."""
    try:
        return json.loads((directory / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _unreadable(directory, error) from None


def load_program(directory: Path, name: str) -> nn.Module:
    """The program `name` (`model.pt2`, `prefill.pt2`) of an emitted directory, runnable;
    `DeosCompileError` for a missing or corrupt one."""
    try:
        return torch.export.load(directory / name).module()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise _unreadable(directory, error) from None


def model_of_plan(directory: Path, plan: dict[str, Any], trust_code: bool) -> LoadedModel:
    """The model an emitted directory's `plan` was compiled from (a checkpoint: loaded with
    transformers); a `module:` model runs only with `trust_code`."""
    if str(plan["model"]).startswith("module:") and not trust_code:
        raise DeosCompileError(f"{directory / 'plan.json'} names model `{plan['model']}`: loading it runs that "
                               "Python code", "if you trust it, pass trust_code=True")
    return resolve_model(str(plan["model"]), str(plan.get("dtype", "float32")))


def load_emitted(directory: Path, trust_code: bool = False) -> nn.Module:
    """The emitted model in `directory` (module docstring); a `module:` model named by its
    plan runs only with `trust_code`. Raises `DeosCompileError` for a missing or corrupt one."""
    plan = read_plan(directory)
    program = load_program(directory, "model.pt2")
    return WithPrelude(program, model_of_plan(directory, plan, trust_code).prelude) if plan.get("prelude") else program
