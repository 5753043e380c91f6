"""Generation with an emitted model (`deos_dsl.pipeline.generate`) on a tiny HF LLaVA: the plan
applied at prefill, decoding on the reduced KV cache.

- a plan that keeps every token generates exactly what HF's own `generate` does (greedy);
- a reducing plan caches fewer tokens from its site on, and every decode step equals the
  emitted graph run on the prompt plus the tokens decoded so far (positions continue the
  original ones: the same step with renumbered positions differs);
- right-padded rows generate what each row generates alone;
- a vision-tower plan (an eager decoder fed fewer image placeholders) caches fewer tokens in
  every layer;
- a model split at its language model (Qwen2-VL: M-RoPE) generates what HF generates;
- the saved artefact (`prefill.pt2`) reloads and generates the same, at other prompt lengths;
- the prefill with exposed caches (`passes/expose_cache.py`): the original outputs unchanged,
  the caches shaped `[B, H_kv, T_l, hd]`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

from compiler_models import loaded
from deos_dsl.compiler.models import LoadedModel
from deos_dsl.compiler.tiny_models import TINY_MODELS
from deos_dsl.frontend import loads
from deos_dsl.errors import DeosCompileError
from deos_dsl.pipeline import ARTIFACTS, Emitted, compile_emitted, generator_of, write_artifacts
from deos_dsl.pipeline.generate import (PREFILL, EagerPrefill, Generator, GraphPrefill, ProgramPrefill, groups_of,
                                        load_generator, write_generative)

LLAVA = "hf:LlavaForConditionalGeneration"
NEW_TOKENS = 6


def space(site: str, retain: str, score: str = "norm"):
    text = f"""space s {{
  tokens {{ reducible: visual protected: text, system }}
  site {site} {{
    activate: on
    retain: {retain}
    score: {score}
    operator: prune
  }}
}}
"""
    (parsed,) = loads(text)
    return parsed


@functools.cache
def tiny(batch: int = 2) -> LoadedModel:
    whole = loaded(LLAVA)
    kwargs = {name: value[:batch] for name, value in whole.kwargs.items()}
    kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])  # so that the graphs take one (padding)
    return dataclasses.replace(whole, kwargs=kwargs)


@functools.cache
def emitted(site: str, retain: str, batch: int = 2) -> Emitted:
    return compile_emitted(space(site, retain), tiny(batch))


def generator(result: Emitted) -> Generator:
    model = tiny().model
    return Generator(GraphPrefill(result, groups_of(model)), model)


def hf_generate(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = tiny().model.generate(**inputs, generation_config=config)
    return out[:, inputs["input_ids"].shape[1]:]


def test_an_all_keep_plan_generates_what_hf_generates():
    result = emitted("decoder.layers[0]", "100%")
    (plan,) = result.plans.values()
    assert plan.active and plan.keep == plan.entering  # the site runs, and keeps every token
    generated = generator(result).generate(tiny().kwargs, NEW_TOKENS)
    assert torch.equal(generated.tokens, hf_generate(tiny().kwargs))
    length = tiny().kwargs["input_ids"].shape[1]
    assert generated.cache_lengths == [length] * len(generated.cache_lengths)


def test_the_dense_loop_generates_what_hf_generates():
    model = tiny().model
    generated = Generator(EagerPrefill(model), model).generate(tiny().kwargs, NEW_TOKENS)
    assert torch.equal(generated.tokens, hf_generate(tiny().kwargs))


def test_a_reducing_plan_decodes_on_the_reduced_cache():
    result = emitted("decoder.layers[0]", "50%")
    (plan,) = result.plans.values()
    inputs = tiny().kwargs
    length, removed = inputs["input_ids"].shape[1], plan.entering - plan.keep
    run = generator(result)
    generated = run.generate(inputs, NEW_TOKENS)
    layers = len(generated.cache_lengths)
    assert removed > 0 and generated.cache_lengths == [length] + [length - removed] * (layers - 1)
    # step by step: the decode logits equal the emitted graph on prompt + decoded tokens (the norm
    # score of the image tokens does not depend on the text after them, so the same tokens are kept)
    logits, cache, rows, positions = run.start(inputs)
    tokens = inputs["input_ids"]
    for step in range(3):
        chosen = logits.argmax(-1)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        with torch.no_grad():
            graph = result.module(input_ids=tokens, attention_mask=torch.ones_like(tokens),
                                  pixel_values=inputs["pixel_values"]).logits[:, -1]
        if step == 0:  # the positions matter: the decoded token at the renumbered position differs
            renumbered = run.step(chosen, _copy(cache), rows, positions - removed)
            assert not torch.allclose(renumbered, graph, atol=1e-4)
        logits = run.step(chosen, cache, rows, positions)
        positions = positions + 1
        torch.testing.assert_close(logits, graph, atol=1e-4, rtol=1e-4)
        assert torch.equal(chosen, generated.tokens[:, step])


def _copy(cache):
    copied = type(cache)()
    for index, layer in enumerate(cache.layers):
        copied.update(layer.keys.clone(), layer.values.clone(), index)
    return copied


def test_right_padded_rows_generate_what_each_row_generates_alone():
    result = emitted("decoder.layers[0]", "100%")
    inputs = dict(tiny().kwargs)
    mask = torch.ones_like(inputs["input_ids"])
    mask[1, -2:] = 0  # the second prompt is two tokens shorter
    ids = inputs["input_ids"].clone()
    ids[1, -2:] = 0
    padded = {**inputs, "input_ids": ids, "attention_mask": mask}
    generated = generator(result).generate(padded, NEW_TOKENS).tokens
    short = {"input_ids": ids[1:, :-2], "attention_mask": mask[1:, :-2], "pixel_values": inputs["pixel_values"][1:]}
    assert torch.equal(generated[0], hf_generate({**inputs, "attention_mask": mask.clamp(min=1)})[0])
    assert torch.equal(generated[1], hf_generate(short)[0])


def test_a_vision_plan_caches_fewer_tokens_in_every_layer():
    result = emitted("vision.layers[0]", "50%")
    (plan,) = result.plans.values()
    model = tiny().model
    generated = Generator(EagerPrefill(result.module), model).generate(tiny().kwargs, NEW_TOKENS)
    length = tiny().kwargs["input_ids"].shape[1] - (plan.entering - plan.keep)
    assert generated.cache_lengths == [length] * len(generated.cache_lengths)
    with torch.no_grad():
        first = result.module(**tiny().kwargs).logits[:, -1].argmax(-1)
    assert torch.equal(generated.tokens[:, 0], first)


def test_the_exposed_prefill_keeps_the_outputs_and_shapes_the_caches():
    result = emitted("decoder.layers[1]", "50%")
    model = tiny().model
    prefill = GraphPrefill(result, groups_of(model))
    with torch.no_grad():
        logits, *flat = prefill(**tiny().kwargs)
        expected = result.run().logits
    caches = [flat[i:i + 3] for i in range(0, len(flat), 3)]
    assert torch.equal(logits, expected)  # the original output, node for node
    text = model.config.text_config
    heads, dim = text.num_key_value_heads, text.hidden_size // text.num_attention_heads
    (plan,) = result.plans.values()
    length = tiny().kwargs["input_ids"].shape[1]
    for index, (key, value, visible) in enumerate(caches):
        kept = length if index <= 1 else length - (plan.entering - plan.keep)
        assert key.shape == value.shape == (2, heads, kept, dim)
        assert visible.shape[-1] == kept and visible.dtype == torch.bool and bool(visible.all())
    assert result.graph_module is not prefill.graph_module  # the emitted graph itself is not edited


def test_a_model_without_a_traced_decoder_cannot_prefill_from_its_graph():
    result = emitted("vision.layers[0]", "50%")
    with pytest.raises(Exception, match="no traced decoder attention"):
        GraphPrefill(result, 1)


def test_the_generative_artefact_reloads_and_generates_the_same(tmp_path: Path):
    result = emitted("decoder.layers[0]", "50%")
    paths = write_generative(result, tiny(), tmp_path / "out")
    assert sorted(path.name for path in paths) == sorted([*ARTIFACTS, PREFILL])
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["generation"]["inputs"]["input_ids"] == list(tiny().kwargs["input_ids"].shape)
    assert plan["generation"]["layers"] == len(result.decoder_attentions) and plan["generation"]["compact"] is None
    assert plan["generation"]["dynamic_length"]  # a prune site keeps the prompt length a symbol
    reloaded = load_generator(tmp_path / "out")
    assert isinstance(reloaded.prefill, ProgramPrefill)
    in_memory = generator(result)
    inputs = tiny().kwargs
    assert torch.equal(reloaded.generate(inputs, NEW_TOKENS).tokens, in_memory.generate(inputs, NEW_TOKENS).tokens)
    # shorter and longer prompts than the example's
    for length in (inputs["input_ids"].shape[1] - 2, inputs["input_ids"].shape[1] + 3):
        ids = torch.cat([inputs["input_ids"], inputs["input_ids"][:, -3:]], 1)[:, :length]
        other = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        assert torch.equal(reloaded.generate(other, NEW_TOKENS).tokens, in_memory.generate(other, NEW_TOKENS).tokens)
    with pytest.raises(DeosCompileError, match="takes 2 prompt"):
        reloaded.generate({name: value[:1] for name, value in inputs.items()}, NEW_TOKENS)


def test_a_directory_emitted_without_a_prefill_says_how_to_get_one(tmp_path: Path):
    result = emitted("decoder.layers[0]", "50%")
    write_artifacts(result, tmp_path / "plain")
    with pytest.raises(DeosCompileError, match="emit it again with --generate"):
        load_generator(tmp_path / "plain")


QWEN_VL = "Qwen2VLForConditionalGeneration"


@pytest.mark.parametrize("retain", ["100%", "50%"])
def test_a_split_model_generates_with_m_rope_positions(retain: str):
    # Qwen2-VL: the prelude runs eagerly, the language model is the emitted graph; decoded tokens
    # take the dense model's M-RoPE positions (all three components one past the prompt's largest)
    split = loaded(f"hf:{QWEN_VL}")
    whole = split.prelude.model
    raw = TINY_MODELS[QWEN_VL].inputs(whole)  # the processor's inputs
    text = f"""space s {{
  tokens {{ reducible: visual protected: text, system }}
  site decoder.layers[0] {{ at: before activate: on retain: {retain} score: norm operator: prune }}
}}"""
    result = compile_emitted(loads(text)[0], split)
    generated = generator_of(result, split).generate(raw, NEW_TOKENS)
    (plan,) = result.plans.values()
    length = raw["input_ids"].shape[1]
    assert generated.cache_lengths == [length - (plan.entering - plan.keep)] * len(generated.cache_lengths)
    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        dense = whole.generate(**raw, generation_config=config)[:, length:]
        first = result.module(**split.prelude(raw))[:, -1].argmax(-1)
    assert torch.equal(generated.tokens[:, 0], first)
    if retain == "100%":
        assert torch.equal(generated.tokens, dense)


def test_a_vision_plan_reloads_from_its_artefact(tmp_path: Path):
    result = emitted("vision.layers[0]", "50%")
    write_generative(result, tiny(), tmp_path / "out")
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    (site,) = result.plans.values()
    assert plan["generation"]["compact"][1:] == [site.entering, site.keep]  # placeholders -> features
    reloaded = load_generator(tmp_path / "out").generate(tiny().kwargs, NEW_TOKENS)
    in_memory = Generator(EagerPrefill(result.module), tiny().model).generate(tiny().kwargs, NEW_TOKENS)
    assert torch.equal(reloaded.tokens, in_memory.tokens) and reloaded.cache_lengths == in_memory.cache_lengths
