"""The study's table notes: where a shipped baseline space differs from its published method.

One entry per baseline space of `spaces/` that is not its published algorithm exactly (a space
absent here is: FastV, PyramidDrop, 2x2 pooling). `table.md` prints the notes of the baselines it
lists; docs/baselines.md holds the same block (`notes_markdown`), which a test keeps equal, so
the documentation names no difference the study's table does not.
"""

from __future__ import annotations

BASELINE_NOTES: dict[str, str] = {
    "sparsevlm": "a fixed keep ratio per site, where SparseVLM adapts the count to the input (rank of the raters' "
                 "attention; one emitted graph cannot have an input-dependent length); the recycled 30% of the pruned "
                 "tokens are merged into the kept tokens, where SparseVLM clusters them into new tokens",
    "sparsevlm_prune": "SparseVLM's ranking without recycling: an ablation, not a published variant; a fixed keep "
                       "ratio per site",
    "tome": "the tokens keep their original order between layers, where ToMe's release lays them out as "
            "[unmerged A, B]: the A / B pairs differ from the second layer on",
    "evit": "the kept tokens keep their original order, where EViT's release orders them by attention (the same "
            "output for a ViT, whose later blocks carry no positions)",
    "visionzip": "the site is the vision layer the shipped projector reads (`[-1]`; LLaVA-1.5 reads `[-2]`); the "
                 "contextual tokens stay at their targets' places, where VisionZip's release appends them after the "
                 "dominant ones",
    "reweight": "this project's own regime (EOS), not a published baseline",
}


def notes_markdown(names: list[str]) -> list[str]:
    """Markdown lines: a heading sentence and one bullet per name of `names` with a note."""
    noted = [name for name in names if name in BASELINE_NOTES]
    if not noted:
        return []
    return ["Notes: where a baseline differs from its published method (docs/baselines.md):", "",
            *(f"- `{name}`: {BASELINE_NOTES[name]}." for name in noted)]
