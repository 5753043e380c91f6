"""Memory options of the search: gradient accumulation (`--accumulate N`: each process's share
of the batch runs as N micro-batches whose gradients add up, the gate noise drawn for the whole
batch first, so a step equals the one-batch step to float rounding; the graphs are traced at the
micro-batch shape; a batch that does not split is refused before any compute), activation
checkpointing per block (`--recompute`: the same loss and gradients). The peak memory line of
`deos search` and both options end to end: test_search_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deos_dsl.errors import SearchError
from deos_dsl.search.loop import Options, Search
from deos_dsl.search.recompute import partitioned, through_checkpoint
from search_cases import load_space

STEPS = 3


def stepped(tmp: Path, accumulate: int) -> tuple[Search, list[dict]]:
    run = Search(load_space(tmp, steps=STEPS), "embedded", "embedded", tmp / f"out{accumulate}",
                 Options(batch_size=4, val_size=0, device="cpu", accumulate=accumulate))
    run.prepare()
    return run, [run.step(step) for step in range(STEPS)]


def test_micro_batches_give_the_one_batch_step(tmp_path: Path):
    whole, whole_log = stepped(tmp_path, 1)
    parts, parts_log = stepped(tmp_path, 2)
    assert parts.micro == 2 and whole.micro == 4
    for a, b in zip(whole_log, parts_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["task"] == pytest.approx(b["task"], abs=1e-6)
    moved = False
    for name, module in whole.graph.modules.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(parts.graph.modules[name].state_dict()[key], value, atol=2e-5, rtol=1e-5)
            moved |= key == "alpha" and abs(float(value)) > 1e-3  # the learned gates did move
    assert moved


def test_a_batch_that_does_not_split_is_refused_before_any_compute(tmp_path: Path):
    with pytest.raises(SearchError) as caught:
        Search(load_space(tmp_path, steps=STEPS), "embedded", "embedded", tmp_path / "out",
               Options(batch_size=4, val_size=0, device="cpu", accumulate=3))
    assert "does not split over 1 process(es) x 3 micro-batch(es)" in caught.value.message
    assert "--accumulate" in caught.value.hint and not (tmp_path / "out").exists()


# the exported HF LLaVA takes 15 s more: with the slow tests (`pytest -m slow`)
@pytest.mark.parametrize("model", ["embedded", pytest.param("embedded:llava", marks=pytest.mark.slow)])
def test_recomputed_blocks_give_the_same_loss_and_gradients(tmp_path: Path, model: str):
    """`--recompute` (`search/recompute.py`): the split graph with every block part behind a
    checkpoint equals the relaxed graph, its output and every site parameter's gradient, on the
    fx-traced embedded model and the exported HF LLaVA."""
    run = Search(load_space(tmp_path, steps=STEPS), model, "embedded", tmp_path / "out",
                 Options(batch_size=4, val_size=0, device="cpu"))
    graph = run.graph
    split = partitioned(graph.gm, graph.block_map, checkpointed=True).module
    parts = [name for name, _ in split.named_children()]
    assert sum(node.target is through_checkpoint for node in split.graph.nodes) == len(graph.block_map.blocks())
    assert len(parts) > len(graph.block_map.blocks())  # glue parts between the blocks
    inputs = graph.inputs(run.task.train_batch(0, 4, 0, 1))
    for module in graph.modules.values():
        module.alpha.data.fill_(2.0)  # gates open: every site changes the output

    def loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
        graph.gm.zero_grad(set_to_none=True)
        leaves = [t for t in torch.utils._pytree.tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]
        loss = sum(t.float().square().mean() for t in leaves if t.is_floating_point())
        loss.backward()
        return loss.detach(), {(site, name): p.grad.clone() for site, m in graph.modules.items()
                               for name, p in m.named_parameters() if p.grad is not None}

    plain, checkpointed = loss_and_grads(graph.gm), loss_and_grads(split)
    torch.testing.assert_close(checkpointed[0], plain[0], atol=1e-5, rtol=1e-6)
    assert plain[1] and checkpointed[1].keys() == plain[1].keys()
    for key, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][key], grad, atol=1e-6, rtol=1e-5)
