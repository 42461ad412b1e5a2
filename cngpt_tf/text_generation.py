"""`cngpt_tf.pipeline("text-generation", model=PATH)`: the seed release's HF pipeline call, in TensorFlow.

    gen = cngpt_tf.pipeline("text-generation", model="out/")
    gen("明月几时有，", max_length=60, do_sample=True, top_k=8)
    # -> [{"generated_text": "明月几时有，…"}]

Unlike HF's PyTorch pipeline on these models, the text comes back clean (no spaces between Chinese
characters, no [CLS]/[SEP]/## pieces), the prompt is encoded the way the model was trained ([CLS]
first), and a list of prompts is generated as one batch.
"""

from __future__ import annotations

from .generator import Generator

TASKS = ("text-generation",)
DEFAULT_MAX_NEW_TOKENS = 50


class TextGenerationPipeline:
    def __init__(self, generator: Generator, **defaults):
        if generator.tokenizer is None:
            raise ValueError("text-generation needs a tokenizer: no vocab.txt beside the model weights")
        self.generator = generator
        self.defaults = defaults

    def __call__(self, text_inputs, **kwargs):
        """A str -> [{"generated_text": ...}] (one per return sequence); a list -> a list of those."""
        options = {**self.defaults, **kwargs}
        if "max_length" not in options and "max_new_tokens" not in options:
            options["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        return_full_text = options.pop("return_full_text", True)
        n = options.get("num_return_sequences", 1)
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        texts = self.generator.generate(prompts, **options)
        results = []
        for i, prompt in enumerate(prompts):
            rows = texts[i * n:(i + 1) * n]
            if not return_full_text:
                rows = [t[len(prompt):] if t.startswith(prompt) else t for t in rows]
            results.append([{"generated_text": t} for t in rows])
        return results[0] if single else results


def pipeline(task: str, model, **defaults) -> TextGenerationPipeline:
    """model: a pt2tf OUT_DIR, a tf2/ or tf1/ folder, or a loaded `Generator`.

    Keyword arguments become per-call defaults (e.g. `max_new_tokens=50, do_sample=True`).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    generator = model if isinstance(model, Generator) else Generator.from_pretrained(model)
    return TextGenerationPipeline(generator, **defaults)
