"""deos_dsl.measure: what an emitted graph really saves, measured against the dense model.

>>> searched = load_searched(Path("runs/s25"))          # a finished `deos search` directory
>>> comparison = compare(searched.task, *searched.subjects(), searched.task.eval_batch(1000))
>>> comparison.ideal_speedup, comparison.speedup(32), comparison.efficiency(32)

One job per module: `flops` (FLOPs counted by torch's `FlopCounterMode`), `latency`
(interleaved median wall-clock times), `compare` (accuracy, FLOPs, latency, speedups),
`render` (rich and markdown tables), `searched` (a search directory compiled, evaluation files),
`prompts` (a generative model and real prompts for the generation benchmarks).
`deos evaluate DIR` runs them on a search directory.
"""

from .compare import Comparison, Measured, Subject, accuracy_and_flops, compare, hits_and_flops
from .flops import counted_flops
from .latency import GenerationTimes, generation_latencies, median_latencies
from .prompts import model_and_prompts
from .render import comparison_markdown, comparison_table
from .searched import EmittedSizes, Searched, load_searched, write_evaluation

__all__ = [
    "Comparison", "EmittedSizes", "GenerationTimes", "Measured", "Searched", "Subject", "accuracy_and_flops", "compare", "hits_and_flops", "comparison_markdown", "comparison_table", "counted_flops",
    "generation_latencies", "load_searched", "median_latencies", "model_and_prompts", "write_evaluation",
]
