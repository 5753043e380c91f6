"""The shipped HF LLaVA with plain transformers: load the folder, ask questions, generate.

    python examples/shipped_llava_generate.py [--questions 8]

Nothing here uses deos but the path of the folder and the benchmark's scenes: any
`from_pretrained` checkpoint with a processor is used the same way.
"""

from __future__ import annotations

import argparse

import torch
import transformers as tf

from deos_dsl.data import shapes_vqa_example
from deos_dsl.embedded import LLAVA_DIRECTORY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=8, help="test questions to ask")
    args = parser.parse_args()
    model = tf.LlavaForConditionalGeneration.from_pretrained(LLAVA_DIRECTORY, local_files_only=True).eval()
    processor = tf.AutoProcessor.from_pretrained(LLAVA_DIRECTORY, local_files_only=True)
    for index in range(args.questions):
        example = shapes_vqa_example("test", index)
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.prompt}]}]
        prompt = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=list(example.images), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        reply = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(f"[{example.family:9s}] {example.prompt:45s} -> {reply:8s} (truth: {example.answer})")


if __name__ == "__main__":
    main()
