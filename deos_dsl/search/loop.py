"""The search loop (DESIGN 1.2): the frozen model, only the operator parameters train.

Per step `s` of `S` (temperature `T_s` from the policy's `anneal`, `relaxation.annealed`):
1. every site's soft top-k temperature is set to `T_s`; every LEARNED gate gets one relaxed
   sample per example (`relaxation.gate_noise`, drawn for the GLOBAL batch from a generator
   seeded by (seed, s) alone, each process taking its rows: a resumed run draws exactly the
   same noise, and W processes the same as one);
2. constraints on the EXPECTED schedule: `TokenFlow` with each gate's `E[z]` at `T_s` and each
   site's keep rule; violations `g`, penalty `mu * max(0, g) + rho / 2 * max(0, g)^2`
   (`lagrangian.py`); its gradient is taken first, apart (it depends on the parameters alone);
3. objective on the train batch (the task's, `deos_dsl.tasks`): the answer loss (`cross_entropy`
   / `lm`, teacher-forced for a language model) or `kl` to the dense model's answers, plus
   `align * ||h - h_dense||^2 / ||h_dense||^2`, the relative squared error of the final hidden
   states on the protected (non-reducible, non-padding) positions, per example; the dense
   reference runs without gradient only when needed (align > 0 or kl);
4. backward of the objective (averaged over processes by DDP, or, with `shard`, the blocks'
   weights sharded by FSDP2 and the operator gradients all-reduced: `ddp.py`; with `accumulate` N, the batch of
   each process runs as N micro-batches whose gradients add up, the gate noise drawn for the
   whole batch first, so the update is the one batch's: activations of one micro-batch at a
   time, and only the last one synchronises; with `recompute`, each block's activations are
   recomputed in the backward pass, `recompute.py`), the usefulness estimate
   `-d objective / d c` of every learned keep ratio is updated (running mean, decay 0.9, for
   the discretiser's repair), the penalty gradient is added, the optimiser steps
   (the policy's adam / adamw / sgd at its `lr`), and the multipliers ascend
   (`mu <- max(0, mu + eta * g)`);
5. deciding (`relaxation.py`): from the midpoint the penalty of step 2 also holds the hinge that
   pushes every learned gate to the side it is on, and in the last quarter the keep logits are
   projected after the step so that every upper limit's EXPECTED value meets its target.
The main process logs each step (`log.py`), checkpoints every `checkpoint_every` steps and at
the end (`checkpoint.py`), then discretises (`discretise.py`), validates (`validate.py`) and
writes the result and the plots. On CUDA both forwards run under bf16 autocast. The peak memory
the run used (CUDA: the allocator's peak on the device; CPU: the process's peak resident set)
is in the outcome (`deos search` prints it; the result files stay the same on every machine).

Every check of the input happens before any compute (`Search.__init__`): the model, the data
(`make_task`: every example checked), the objective against the data, the output directory /
checkpoint, and the reachability of every budget on the bound model. The graphs are traced at
the search's own micro-batch shape (the first rows of this process's first train batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import Tensor

from deos_dsl.compiler.models import resolve_model, resolved_dtype
from deos_dsl.data import Encoded
from deos_dsl.errors import SearchError, first_line
from deos_dsl.frontend import ir
from deos_dsl.pipeline import search_flops
from deos_dsl.tasks import make_task

from . import ddp
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .constraints import Constraints, FlopsModel, FlowSite, Limit, expected_leaving
from .discretise import Discretiser, Schedule, site_retains
from .graph import SearchGraph, build_search_graph, sites_off, start_keeps
from .lagrangian import AugmentedLagrangian
from .log import JsonLog, Progress, read_log
from .plots import plot_trajectories
from .relaxation import annealed, decision_weight, expected_gate, gate_from_noise, gate_noise, settling, undecided
from .recompute import partitioned
from .result import Run, read_run, write_result, write_run
from .validate import dense_accuracy, schedule_accuracy

DECAY = 0.9  # running mean of the usefulness estimates
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class Options:
    """How to run a search: `steps` None = the policy's; `stop_after` ends the run after that
    many steps as a kill would (what was checkpointed stays); `val_size` 0 skips validation;
    `start` warm-starts the keep ratios (site -> ratio of its entering tokens, `graph.start_keeps`)."""

    steps: int | None = None
    batch_size: int = 32
    checkpoint_every: int = 50
    device: str = "auto"
    val_size: int = 1000
    stop_after: int | None = None
    dtype: str = "auto"
    accumulate: int = 1
    recompute: bool = False
    shard: bool = False
    start: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a search produced: the schedule (None when stopped early), its limits and the
    validation accuracies (`main`: this is the process that wrote them)."""

    out: Path
    steps_done: int
    main: bool = True
    limits: list[Limit] = field(default_factory=list)
    schedule: Schedule | None = None
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    peak_memory: int = 0
    device: str = "cpu"


def number(expr: ir.Expr | None) -> float:
    assert isinstance(expr, ir.Num), "policies come from a resolved space"
    return expr.value


def resolved_steps(options: Options, policy: ir.Policy) -> int:
    """The steps a search runs: `--steps` when given, else the policy's."""
    return options.steps or int(number(policy.steps))


def step_noise(seed: int, step: int) -> torch.Generator:
    """The generator of the gate noise of `step`'s global batch (a function of the two alone;
    the generator rank 0 used when each process drew its own, so one-process runs are unchanged)."""
    return torch.Generator().manual_seed((seed * 1_000_003 * 1_000_033 + step) % (1 << 63))


def absolute(name: str) -> str:
    """A model or data name that is a path, made absolute (`embedded`, `hf:`, `module:` as they are)."""
    return str(Path(name).resolve()) if ":" not in name and name != "embedded" and Path(name).exists() else name


def _real_tokens(batch: Encoded, length: int) -> Tensor:
    """`[B, N]` bool: the tokens that are no padding (all of them without an attention mask)."""
    mask = batch.kwargs.get("attention_mask")
    if mask is None or mask.shape[1] != length:
        return torch.ones(len(batch), length, dtype=torch.bool, device=batch.family.device)
    return mask.bool()


def flops_model(graph: SearchGraph) -> FlopsModel:
    """The symbolic cost model's differentiable FLOPs of `graph`'s sites (`deos_dsl.cost`)."""
    return search_flops(graph.bound)


class Search:
    """One search into `out` (module docstring); `run()` does the compute."""

    def __init__(self, space: ir.Space, model: str, data: str, out: Path, options: Options = Options(),
                 resume: bool = False, console: Console | None = None) -> None:
        assert space.policy is not None and space.objective is not None, "a resolved space has its policy and objective"
        self.policy, self.objective = policy, _ = space.policy, space.objective
        self.space, self.out, self.options, self.console = space, out, options, console
        model, data = absolute(model), absolute(data)  # run.json names them wherever it is read from
        steps = resolved_steps(options, policy)
        if options.batch_size < 1 or options.checkpoint_every < 1 or options.accumulate < 1:
            raise SearchError("--batch, --checkpoint-every and --accumulate must be positive")
        self.device = ddp.pick_device(options.device)
        dtype = resolved_dtype(options.dtype, str(self.device))
        self.run_info = Run(space, model, data, options.batch_size, steps, int(number(policy.seed)), dtype, dict(options.start))
        self.loaded = resolve_model(model, dtype, str(self.device))
        self.task = make_task(data, self.loaded)
        refused = self.task.check_objective(self.objective.task)
        if refused is not None:
            raise SearchError(f"{refused}, and `{data}` has examples without one",
                              "use `objective { task: kl }` (label-free), or give every example an answer")
        self.world = ddp.join(self.device)
        try:
            self._check_and_build(space, model, resume)
        except BaseException:
            ddp.leave(self.world)
            raise

    def _check_and_build(self, space: ir.Space, model: str, resume: bool) -> None:
        """The checks that need the process group, and the graphs (still no compute)."""
        options = self.options
        if options.batch_size % (self.world.size * options.accumulate):
            raise SearchError(f"batch {options.batch_size} does not split over {self.world.size} process(es) x "
                              f"{options.accumulate} micro-batch(es)",
                              "use a batch size divisible by the number of processes times --accumulate")
        self.state = self._check_out(resume)
        torch.manual_seed(self.run_info.seed)
        self.micro = options.batch_size // self.world.size // options.accumulate
        example = self.task.train_batch(0, options.batch_size, self.world.rank, self.world.size).rows(0, self.micro)
        example = example.to(self.device)
        self.graph = build_search_graph(space, replace(self.loaded, args=example.args, kwargs=example.kwargs))
        start_keeps(self.graph.modules, options.start)  # a resumed run then loads its checkpoint over it
        flops = flops_model(self.graph) if any(c.quantity == "flops" for c in space.constraints) else None
        self.constraints = Constraints.of(space, self.graph.block_map, self.graph.flow, flops)
        self.retains = site_retains(space, self.graph.sites)
        Discretiser(self.constraints, self.graph.modules, self.retains, {}).check_reachable(model)
        self.params = [p for m in self.graph.modules.values() for p in m.parameters() if p.requires_grad]
        if not self.params:
            raise SearchError(f"space `{space.name}` learns nothing: every site is fixed",
                              "make a site's activate, retain or operator `learned`, or emit the space directly")
        if self.state is None:
            self._create_out()

    def _check_out(self, resume: bool) -> dict[str, Any] | None:
        """Validate the output directory (and read the checkpoint on resume) on every process; writes nothing."""
        if resume:
            state = load_checkpoint(self.out)
            differences = read_run(self.out).differences(self.run_info)
            if differences:
                raise SearchError(f"--resume with other arguments than the search in {self.out}: {', '.join(differences)} differ",
                                  "resume with the same space, --model, --data, --batch, --steps and --start")
            if not 0 <= state["step"] <= self.run_info.steps:
                raise SearchError(f"checkpoint {self.out / CHECKPOINT} says {state['step']} steps are done, but this "
                                  f"search has {self.run_info.steps}", "delete it and run the search again without --resume")
            return state
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise SearchError(f"{self.out} already exists and is not empty", "choose a new --out, or pass --resume")
        return None

    def _create_out(self) -> None:
        """Write `run.json` into a new output directory, once every check has passed."""
        if self.world.size > 1:
            dist.barrier()  # every process has looked at the directory before the main one writes
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_run(self.out, self.run_info)

    # ---- the loop -------------------------------------------------------------------------
    def prepare(self) -> int:
        """Move the graphs to the device, build the optimiser and the multipliers, load the
        checkpoint when resuming; returns the first step to run."""
        policy = self.policy
        self.graph.gm.to(self.device)
        self.graph.dense.to(self.device)
        self.optimizer = OPTIMIZERS[policy.optimizer](self.params, lr=number(policy.lr))
        self.lagrangian = AugmentedLagrangian(len(self.constraints.limits), number(policy.dual_step), number(policy.penalty))
        self.usefulness: dict[str, float] = {}
        start = 0
        if self.state is not None:
            try:
                for name, module in self.graph.modules.items():
                    module.load_state_dict(self.state["modules"][name])
                self.optimizer.load_state_dict(self.state["optimizer"])
                self.lagrangian.load_state_dict(self.state["lagrangian"])
            except (KeyError, RuntimeError, ValueError, TypeError) as error:  # a foreign or edited checkpoint
                raise SearchError(f"checkpoint {self.out / CHECKPOINT} does not fit this search ({first_line(error)[:200]})",
                                  "delete it and run the search again without --resume") from None
            self.usefulness, start = dict(self.state["usefulness"]), self.state["step"]
        self.sharded = self.options.shard and self.world.size > 1
        if self.sharded:
            parts = partitioned(self.graph.gm, self.graph.block_map, self.options.recompute)
            ddp.release(ddp.shard(parts.blocks, self.world, self.device, set(self.params)))
            self.model = parts.module  # the only graph left with the blocks' weights
        else:
            split = partitioned(self.graph.gm, self.graph.block_map, True).module if self.options.recompute else None
            self.model = ddp.replicate(split or self.graph.gm, self.world, self.device)
        return start

    def run(self) -> Outcome:
        """Search, then discretise, validate and write the result (module docstring)."""
        started = time.perf_counter()
        start = self.prepare()
        steps = self.run_info.steps
        end = steps if self.options.stop_after is None else min(steps, self.options.stop_after)
        log = JsonLog(self.out, keep_until=start) if self.world.main else None
        try:
            with Progress(self.console if self.world.main else None, steps, start) as progress:
                for step in range(start, end):
                    record = self.step(step)
                    record["seconds"] = round(time.perf_counter() - started, 3)
                    if log is not None:
                        log.append(record)
                    progress.advance(record)
                    if self.world.main and ((step + 1) % self.options.checkpoint_every == 0 or step + 1 == steps):
                        self._checkpoint(step + 1)
            outcome = Outcome(self.out, end, self.world.main, self.constraints.limits)
            if end == steps:
                self._finish(outcome)
        finally:
            ddp.leave(self.world)
        outcome.seconds = time.perf_counter() - started
        outcome.peak_memory, outcome.device = ddp.peak_memory(self.device), str(self.device)
        return outcome

    def _checkpoint(self, done: int) -> None:
        save_checkpoint(self.out, {"step": done, "modules": {n: m.state_dict() for n, m in self.graph.modules.items()},
                                   "optimizer": self.optimizer.state_dict(), "lagrangian": self.lagrangian.state_dict(),
                                   "usefulness": dict(self.usefulness)})

    def expected_values(self, temperature: float) -> tuple[list[Tensor], dict[str, float]]:
        """Each limit's expected value (differentiable in the site parameters), and each site's
        expected gate, at relaxation `temperature`."""
        relaxation = self.policy.relaxation
        gates: dict[str, Tensor] = {}
        for name, module in self.graph.modules.items():
            gates[name] = expected_gate(module.alpha, relaxation, temperature) if module.gate_param.learned else module.gate

        def leave(site: FlowSite, entering: Tensor | int) -> Tensor:
            module = self.graph.modules[site.name]
            entering = torch.as_tensor(entering, dtype=torch.float32, device=module.alpha.device)
            return expected_leaving(module, entering, gates[site.name])

        values = self.constraints.values(self.graph.flow.through(leave), gates)
        return [torch.as_tensor(v, device=self.device) for v in values], {name: float(g.detach()) for name, g in gates.items()}

    def _objective(self, batch: Encoded, objective: ir.Objective) -> dict[str, Tensor]:
        weight = number(objective.align)
        kl = objective.task == "kl"
        cuda = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            output, hidden, stream = self.model(*self.graph.inputs(batch))  # through DDP when distributed
            output = self.graph.model_output(output)
            reference = None
            if weight > 0 or kl:
                with torch.no_grad():
                    reference = self._dense(batch, stream)
        logits = self.task.logits(output)
        task = self.task.loss(logits, batch, objective.task, None if reference is None else self.task.logits(reference[0]))
        align = torch.zeros((), device=self.device)
        if weight > 0:
            assert reference is not None
            keep = self.graph.protected.to(self.device)[None] & _real_tokens(batch, hidden.shape[1])
            error = ((hidden.float() - reference[1].float()).square().sum(-1) * keep).sum(-1)
            target = (reference[1].float().square().sum(-1) * keep).sum(-1)
            align = (error / target.clamp_min(1e-12)).mean()
        return {"task": task, "align": align, "objective": task + weight * align}

    def _dense(self, batch: Encoded, stream: Tensor) -> tuple[Any, Tensor]:
        """`(model output, hidden)` of the dense model: the dense reference graph from the
        relaxed graph's `stream`; sharded, the sharded relaxed graph with every site off."""
        if not self.sharded:
            return self.graph.run_dense(batch, stream)
        with sites_off(self.graph.modules):
            output, hidden, _ = self.model(*self.graph.inputs(batch))
        return self.graph.model_output(output), hidden

    def step(self, step: int) -> dict[str, Any]:
        """One search step (module docstring, 1-4) after `prepare()`; returns its log record."""
        policy, objective = self.policy, self.objective
        modules, optimizer, lagrangian = self.graph.modules, self.optimizer, self.lagrangian
        assert policy.anneal is not None and policy.relaxation is not None
        temperature = annealed(policy.anneal, step, self.run_info.steps)
        values, expected = self.expected_values(temperature)
        violations = torch.stack([limit.violation(v).float() for limit, v in zip(self.constraints.limits, values)]) \
            if values else torch.zeros(0, device=self.device)
        deciding = decision_weight(number(policy.decide), step, self.run_info.steps) * self._undecided()
        penalty = lagrangian.penalty_terms(violations).sum() + deciding
        penalty_grads = torch.autograd.grad(penalty, self.params, allow_unused=True) if penalty.requires_grad else None
        generator = step_noise(self.run_info.seed, step)
        local = self.run_info.batch_size // self.world.size
        mine = slice(self.world.rank * local, (self.world.rank + 1) * local)  # this process's rows of the batch
        noise: dict[str, Tensor] = {}
        for name, module in modules.items():
            module.temperature.fill_(temperature)
            if module.gate_param.learned:
                drawn = gate_noise(self.run_info.batch_size, generator)[mine]
                noise[name] = drawn.to(device=module.alpha.device, dtype=module.alpha.dtype)
        optimizer.zero_grad(set_to_none=True)
        batch = self.task.train_batch(step, self.run_info.batch_size, self.world.rank, self.world.size).to(self.device)
        parts = self.options.accumulate
        totals = torch.zeros(3, device=self.device)
        for part in range(parts):
            rows = slice(part * self.micro, (part + 1) * self.micro)
            for name, u in noise.items():
                modules[name].gate_sample = gate_from_noise(modules[name].alpha, u[rows], policy.relaxation, temperature)
            with ddp.no_sync(self.model, last=part == parts - 1):
                losses = self._objective(batch.rows(rows.start, rows.stop), objective)
                (losses["objective"] / parts).backward()
            totals += torch.stack([losses[key].detach() for key in ("objective", "task", "align")]) / parts
        if self.sharded:
            ddp.average_gradients(self.params, self.world)
        for module in modules.values():
            module.gate_sample = None
        self._update_usefulness()
        if penalty_grads is not None:
            for param, grad in zip(self.params, penalty_grads):
                if grad is not None:
                    param.grad = grad if param.grad is None else param.grad + grad
        optimizer.step()
        lagrangian.update(violations)
        shift = self._project(temperature) if settling(number(policy.decide), step, self.run_info.steps) else 0.0
        logged = ddp.mean_over(totals, self.world).cpu()
        record = self._record(step, temperature, logged, float(penalty.detach()), float(deciding.detach()),
                              [v.detach() for v in values], violations.detach(), lagrangian, expected)
        return {**record, "projected": shift}

    def _project(self, temperature: float) -> float:
        """Settle phase (`relaxation.settling`): shift every learned keep logit down by the
        smallest `delta >= 0` (bisection, to 1e-6) that brings each upper limit's EXPECTED value
        within its target; returns `delta` (0 when they hold, or no keep is learned)."""
        learned = [m.beta for m in self.graph.modules.values() if m.keep_param.learned]
        upper = [i for i, limit in enumerate(self.constraints.limits) if limit.upper]
        if not learned or not upper:
            return 0.0

        def over(delta: float) -> bool:
            with torch.no_grad():
                for beta in learned:
                    beta.sub_(delta)
                values, _ = self.expected_values(temperature)
                for beta in learned:
                    beta.add_(delta)
            return any(not self.constraints.limits[i].met(float(values[i])) for i in upper)

        if not over(0.0):
            return 0.0
        low, high = 0.0, 1.0
        while over(high) and high < 64:
            low, high = high, 2 * high
        while high - low > 1e-6:
            middle = (low + high) / 2
            low, high = (low, middle) if not over(middle) else (middle, high)
        with torch.no_grad():
            for beta in learned:
                beta.sub_(high)
        return high

    def _undecided(self) -> Tensor:
        """`sum_g undecided(alpha_g)` over the learned gates (a 0-d tensor; 0 without any)."""
        terms = [undecided(m.alpha).sum() for m in self.graph.modules.values() if m.gate_param.learned]
        return torch.stack(terms).sum() if terms else torch.zeros((), device=self.device)

    def _update_usefulness(self) -> None:
        """Running mean of `-d objective / d c` per learned keep ratio (the objective's gradient only)."""
        for name, module in self.graph.modules.items():
            if not module.keep_param.learned or module.beta.grad is None:
                continue
            (slope,) = torch.autograd.grad(module.keep, module.beta)
            if float(slope) <= 0:
                continue
            raw = -float(module.beta.grad) / float(slope)
            old = self.usefulness.get(name)
            self.usefulness[name] = raw if old is None else DECAY * old + (1 - DECAY) * raw

    def _record(self, step: int, temperature: float, logged: Tensor, penalty: float, deciding: float, values: list[Tensor],
                violations: Tensor, lagrangian: AugmentedLagrangian, expected: dict[str, float]) -> dict[str, Any]:
        sites = {}
        with torch.no_grad():
            for name, module in self.graph.modules.items():
                n = module.span[1] - module.span[0]
                keep = module.keep if module.count_mode is None else module.keep_ratio(torch.tensor([float(n)]))[0]
                sites[name] = {"gate": float(module.gate), "expected_gate": expected[name], "keep": float(keep),
                               **{key: float(module.value(key)) for key in ("gamma", "tau", "rho", "nu", "theta")}}
        constraints = {limit.label: {"value": float(v), "g": float(g), "mu": float(mu)}
                       for limit, v, g, mu in zip(self.constraints.limits, values, violations, lagrangian.mu)}
        loss, task, align = (float(x) for x in logged)
        return {"step": step, "temperature": temperature, "loss": loss + penalty, "task": task, "align": align,
                "penalty": penalty, "decide": deciding, "constraints": constraints, "sites": sites}

    def _finish(self, outcome: Outcome) -> None:
        """Discretise, validate (the final and the rounded schedule, the dense model), write the
        result and the plots (main process). `schedule.json` records each limit's EXPECTED value
        at the end (before discretisation) beside its discrete one."""
        policy = self.policy
        assert policy.anneal is not None
        with torch.no_grad():
            values, expected = self.expected_values(annealed(policy.anneal, self.run_info.steps - 1, self.run_info.steps))
        discretiser = Discretiser(self.constraints, self.graph.modules, self.retains, self.usefulness, expected)
        schedule = discretiser.run(number(policy.snap))
        outcome.schedule = schedule
        if not (self.world.main or self.sharded):  # a sharded graph runs on every process at once
            return
        originals = {site.name: self.space.sites[site.site_index] for site in self.graph.sites}
        settings = schedule.settings(originals)
        if self.options.val_size > 0:
            batch = self.task.eval_batch(self.options.val_size, "val")
            model = self.model if self.sharded else None
            assert schedule.rounded is not None
            rounded = schedule.rounded.settings(originals)
            outcome.accuracy = {"schedule": schedule_accuracy(self.graph, self.task, settings, batch, self.device, model)}
            outcome.accuracy["rounded"] = outcome.accuracy["schedule"] if rounded == settings else \
                schedule_accuracy(self.graph, self.task, rounded, batch, self.device, model)
            outcome.accuracy["dense"] = dense_accuracy(self.graph, self.task, batch, self.device, model)
        if not self.world.main:
            return
        data = schedule.to_json()
        limits = self.constraints.limits
        data.update(space=self.space.name, model=self.run_info.model, data=self.run_info.data,
                    targets={limit.label: limit.target for limit in limits},
                    expected={limit.label: float(v) for limit, v in zip(limits, values)},
                    expected_met=all(limit.met(float(v)) for limit, v in zip(limits, values)),
                    usefulness=self.usefulness, accuracy=outcome.accuracy, val_size=self.options.val_size)
        write_result(self.out, {n: m.state_dict() for n, m in self.graph.modules.items()}, data, settings)
        plot_trajectories(read_log(self.out), self.out)


def search(space: ir.Space, model: str, data: str, out: Path, options: Options = Options(), resume: bool = False,
           console: Console | None = None) -> Outcome:
    """Check everything, then run the search (see `Search`)."""
    return Search(space, model, data, out, options, resume, console).run()

