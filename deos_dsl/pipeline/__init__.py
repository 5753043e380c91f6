"""deos_dsl.pipeline: the passes in their order (`compile`), and what runs them: emitting a
space on a model (`emit`: model.pt2, model.py, plan.json) and its symbolic cost (`cost`).

>>> bound = bind_model(space, resolve_model("hf:Qwen2Model"))   # passes 1-2, site modules
>>> plans, lengths = discretise(bound)                          # passes 4-6
>>> emitted = compile_emitted(space, resolve_model("embedded"))  # the whole emit route
>>> cost, schedule = cost_space(space, resolve_model("hf:Qwen2Model"))
>>> checked = check_space(space, resolve_model("hf:Gemma2Model"))  # what `deos compile` checks
>>> model = load_emitted(Path("run/emitted"))  # called with the processor's inputs
>>> tokens = generator_of(emitted, loaded).generate(inputs, 16).tokens  # prefill reduced, decode on its cache
"""

from .check import Checked, check_space
from .compile import Bound, attach_cost, bind, bind_model, bind_traced, discretise, relax
from .cost import cost_space, search_flops
from .emit import ARTIFACTS, Emitted, compile_emitted, export_program, load_emitted, unsafe_payloads, write_artifacts
from .generate import Generator, generator_of, load_generator, write_generative

__all__ = [
    "ARTIFACTS", "Bound", "Checked", "Emitted", "Generator", "attach_cost", "bind", "bind_model", "bind_traced", "check_space",
    "compile_emitted", "cost_space",
    "discretise", "export_program", "generator_of", "load_emitted", "load_generator", "relax", "search_flops",
    "unsafe_payloads", "write_artifacts", "write_generative",
]
