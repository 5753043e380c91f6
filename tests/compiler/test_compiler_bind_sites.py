"""Pass 1 (bind_sites): bundled spaces bind to the expected block outputs; bad selectors are
reported all at once at their source positions; the graph and its output are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compiler_models import block_map, tensors
from deos_dsl.compiler.blocks import BlockMap
from deos_dsl.compiler.selectors import glob_regex
from deos_dsl.compiler.sites import META_SITE as META_KEY
from deos_dsl.errors import SpaceError
from deos_dsl.frontend import load_spaces
from deos_dsl.passes.bind_sites import BindSites, bind_sites

SPACES = Path(__file__).resolve().parents[2] / "spaces"
LLAVA, QWEN, CLIP = "hf:LlavaForConditionalGeneration", "hf:Qwen2Model", "hf:CLIPVisionModel"


def space(file: str, name: str):
    return next(s for s in load_spaces(SPACES / file) if s.name == name)


def clear(result: BlockMap) -> None:
    for node in result.graph_module.graph.nodes:
        node.meta.pop(META_KEY, None)


def bound(model: str, file: str, name: str, tracer: str = "torch.export") -> list[str]:
    result = block_map(model, tracer)
    clear(result)
    try:
        return [site.block.path for site in bind_sites(space(file, name), result)]
    finally:
        clear(result)


# (model, file, space) -> bound block paths, in graph order
EXPECTED = {
    ("embedded", "fastv.deos", "fastv"): ["decoder.layers.1"],
    ("embedded", "tome.deos", "tome"): [f"vision.layers.{i}" for i in range(4)],
    ("embedded", "pyramiddrop.deos", "pyramiddrop"): ["decoder.layers.1", "decoder.layers.2", "decoder.layers.3"],
    # 6.25% and 18.75% of 4 layers both floor to layer 0: two sites reduce there in turn
    ("embedded", "sparsevlm.deos", "sparsevlm_prune"): ["decoder.layers.0", "decoder.layers.0", "decoder.layers.1"],
    ("embedded", "pool2x2.deos", "pool2x2"): ["projector"],
    ("embedded", "visionzip.deos", "visionzip"): ["vision.layers.3"],
    ("embedded", "evit.deos", "evit"): ["vision.layers.1", "vision.layers.2", "vision.layers.3"],
    ("embedded", "eos.deos", "eos"): ["projector"] + [f"decoder.layers.{i}" for i in range(4)],
    (LLAVA, "fastv.deos", "fastv"): ["model.language_model.layers.1"],
    (LLAVA, "tome.deos", "tome"): [f"model.vision_tower.encoder.layers.{i}" for i in range(3)],
    (LLAVA, "pool2x2.deos", "pool2x2"): ["model.multi_modal_projector"],
    (LLAVA, "pyramiddrop.deos", "pyramiddrop"): [f"model.language_model.layers.{i}" for i in (0, 1, 2)],
    (QWEN, "fastv.deos", "fastv"): ["layers.1"],
    (QWEN, "sparsevlm.deos", "sparsevlm"): ["layers.0", "layers.0", "layers.1"],
    (CLIP, "tome.deos", "tome"): ["encoder.layers.0", "encoder.layers.1"],
    ("hf:ViTModel", "tome.deos", "tome"): ["layers.0", "layers.1"],
    ("hf:SiglipVisionModel", "visionzip.deos", "visionzip"): ["encoder.layers.1"],
}


@pytest.mark.parametrize(("model", "file", "name"), list(EXPECTED))
def test_bundled_spaces_bind_to_the_expected_blocks(model: str, file: str, name: str):
    assert bound(model, file, name) == EXPECTED[model, file, name]


def test_symbolic_trace_graph_binds_the_same_blocks():
    assert bound("embedded", "tome.deos", "tome", "torch.fx.symbolic_trace") == [f"vision.layers.{i}" for i in range(4)]


def test_bound_node_is_the_single_stream_output_and_nothing_changes():
    result = block_map(LLAVA)
    clear(result)
    gm = result.graph_module
    before_nodes = [(n.name, n.op, str(n.target)) for n in gm.graph.nodes]
    before_out = tensors(result.traced.run())
    bind = BindSites(space("eos.deos", "eos"), result)
    outcome = bind(gm)
    try:
        assert outcome.graph_module is gm and outcome.modified is False
        gm.graph.lint()
        assert [(n.name, n.op, str(n.target)) for n in gm.graph.nodes] == before_nodes
        for a, b in zip(tensors(result.traced.run()), before_out):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        for site in bind.sites:
            block = site.block
            assert site.node is block.exit and result.block_of(site.node) is block
            assert site.node.meta["val"].ndim == 3 and list(block.shape)[0] == "2"
            stream_outputs = [n for n in block.nodes if n.meta.get("val") is not None and getattr(n.meta["val"], "ndim", 0) == 3
                              and any(u not in block.nodes for u in n.users)]
            assert site.node is stream_outputs[-1]
            assert [r["name"] for r in site.node.meta[META_KEY]] == [site.name]
        annotated = [n for n in gm.graph.nodes if META_KEY in n.meta]
        assert len(annotated) == len(bind.sites) == 4  # projector + decoder layers 0..2
    finally:
        clear(result)


def test_pass_refuses_a_graph_already_bound():
    result = block_map("embedded")
    clear(result)
    fastv = space("fastv.deos", "fastv")
    bind_sites(fastv, result)
    try:
        with pytest.raises(ValueError, match="already has bound sites"):
            bind_sites(fastv, result)
    finally:
        clear(result)


BAD = """space bad {
  defaults {
    retain: 50%
    score: norm
    operator: prune
  }
  site vision.layers[*] {}
  site decoder.layers[7] {}
  site decoder.layers[-4, 1] {}
  site "layers.*.mlp" {}
  site "layer.1" {}
  site decoder.layers[1:16:2] {}
  site decoder.layers[-9:] {}
}
"""


def test_bad_selectors_are_all_reported_with_positions_and_suggestions(tmp_path: Path):
    file = tmp_path / "bad.deos"
    file.write_text(BAD)
    (bad,) = load_spaces(file)
    with pytest.raises(SpaceError) as caught:
        bind_sites(bad, block_map(QWEN))
    found = [(d.line, d.col, d.message, d.hint) for d in caught.value.diagnostics]
    assert found == [
        (7, 8, "the model has no `vision.layers` (no vision blocks were found)", "this model's block lists: `decoder.layers`"),
        (8, 23, "layer index 7 is out of range for `decoder.layers` (3 layers: 0..2)",
         "use an index in [-3, 2] or a depth percent"),
        (9, 23, "layer index -4 is out of range for `decoder.layers` (3 layers: 0..2)",
         "use an index in [-3, 2] or a depth percent"),
        (10, 8, "module path `layers.*.mlp` matches 3 module(s) (e.g. `layers.0.mlp`) but no block: "
         "sites sit at block outputs", "blocks are `layers.*`"),
        (11, 8, "module path `layer.1` matches no block of the model", "did you mean `layers.1`?"),
        (12, 23, "the slice bound 16 is past `decoder.layers`, which has 3 layers (0..2)",
         "use bounds in [-3, 3], leave the stop open (`[a:]`) or use depth percents"),
        (13, 23, "the slice bound -9 is past `decoder.layers`, which has 3 layers (0..2)",
         "use bounds in [-3, 3], leave the stop open (`[a:]`) or use depth percents"),
    ]
    assert all(d.file == str(file) and d.source_line == BAD.splitlines()[d.line - 1] for d in caught.value.diagnostics)
    assert not any(META_KEY in n.meta for n in block_map(QWEN).graph_module.graph.nodes)


def test_indices_slices_percents_and_globs(tmp_path: Path):
    file = tmp_path / "many.deos"
    file.write_text("space many {\n  defaults {\n    retain: 50%\n    score: norm\n    operator: prune\n  }\n"
                    "  site decoder.layers[-1] {}\n  site decoder.layers[::2] {}\n  site decoder.layers[25%:75%] {}\n"
                    "  site decoder.layers[100%, 0, 0] {}\n  site \"**.layers.?\" {}\n}\n")
    (many,) = load_spaces(file)
    result = block_map("embedded")
    clear(result)
    try:
        sites = bind_sites(many, result)
    finally:
        clear(result)
    by_site: dict[int, list[str]] = {}
    for site in sites:
        by_site.setdefault(site.site_index, []).append(site.block.path)
    assert {k: sorted(v) for k, v in by_site.items()} == {
        0: ["decoder.layers.3"], 1: ["decoder.layers.0", "decoder.layers.2"],
        2: ["decoder.layers.1", "decoder.layers.2"], 3: ["decoder.layers.0", "decoder.layers.3"],
        4: [f"{role}.layers.{i}" for role in ("decoder", "vision") for i in range(4)]}


def test_glob_semantics():
    assert glob_regex("a.*.c").match("a.b.c") and not glob_regex("a.*.c").match("a.b.x.c")
    assert glob_regex("a.**.c").match("a.b.x.c") and glob_regex("layers.?").match("layers.7")
    assert not glob_regex("layers.?").match("layers.12")


def test_spaces_built_in_code_report_every_error_without_positions():
    from deos_dsl.frontend import ir

    selectors = [ir.RoleSelector(path=["vision", "layers"], index=ir.Index(every=True)), ir.ModuleSelector(pattern="nope.*")]
    built = ir.Space(name="built", sites=[ir.Site(selectors=selectors)])
    with pytest.raises(SpaceError) as caught:
        bind_sites(built, block_map(QWEN))
    assert [(d.file, d.line, d.col) for d in caught.value.diagnostics] == [("<space>", 1, 1)] * 2
