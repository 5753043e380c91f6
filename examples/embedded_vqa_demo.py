"""Demo of the embedded default: ask the shipped model a few questions, then measure how much
random visual-token dropping costs.

    python examples/embedded_vqa_demo.py [--image scene.png]
"""

from __future__ import annotations

import argparse

import torch

from deos_dsl.embedded import ANSWERS, evaluate, fixed_eval_batch, load_default_model, make_example, vqa
from deos_dsl.embedded.evaluate import format_accuracy


def main() -> None:
    """Print answers for five test questions and dense vs random-25% accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", help="save the first scene as a PNG here")
    parser.add_argument("--size", type=int, default=500, help="test examples to evaluate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_default_model()
    print(f"visual span {model.visual_span}, grid {model.vision_grid}")
    for i in range(5):
        ex = make_example("test", i)
        pixels, question, answer, _ = vqa.example_tensors(ex)
        pred = model(pixels[None], question[None]).argmax(-1).item()
        print(f"[{ex.family:9s}] {' '.join(ex.question):50s} -> {ANSWERS[pred]:8s} (truth: {ex.answer})")
    if args.image:
        import matplotlib.pyplot as plt

        plt.imsave(args.image, vqa.render(make_example("test", 0)).transpose(1, 2, 0))
    batch = fixed_eval_batch("test", args.size)
    print("dense       ", format_accuracy(evaluate(model, batch)))
    print("random 25%  ", format_accuracy(evaluate(model, batch, keep_ratio=0.25)))


if __name__ == "__main__":
    main()
