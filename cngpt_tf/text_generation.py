"""`cngpt_tf.pipeline("text-generation", model=PATH)`: the seed release's HF pipeline call, in TensorFlow.

    gen = cngpt_tf.pipeline("text-generation", model="out/")
    gen("明月几时有，", max_length=60, do_sample=True, top_k=8)
    # -> [{"generated_text": "明月几时有，…"}]

Unlike HF's PyTorch pipeline on these models, the text comes back clean (no spaces between Chinese
characters, no [CLS]/[SEP]/## pieces), the prompt is encoded the way the model was trained ([CLS]
first), and a list of prompts is generated as one batch.
"""

from __future__ import annotations

from .generation_config import GenerationConfig
from .generator import Generator

TASKS = ("text-generation",)


class TextGenerationPipeline:
    def __init__(self, generator: Generator, generation_config: GenerationConfig | None = None, *,
                 return_full_text: bool = True, **defaults):
        """The pipeline's settings: `generation_config` (default: the generator's) with `defaults`
        (GenerationConfig fields) on top, checked here against the model."""
        if generator.tokenizer is None:
            raise ValueError("text-generation needs a tokenizer: no vocab.txt beside the model weights")
        self.generator = generator
        self.generation_config = generator.settings(generation_config, **defaults)
        self.return_full_text = return_full_text

    def __call__(self, text_inputs, generation_config: GenerationConfig | None = None, **kwargs):
        """A str -> [{"generated_text": ...}] (one per return sequence); a list -> a list of those.
        Keyword arguments override the pipeline's settings for this call, as in HF (`max_length`
        replaces a default `max_new_tokens`); the default length is `default_max_new_tokens`."""
        return_full_text = kwargs.pop("return_full_text", self.return_full_text)
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        base = self.generation_config if generation_config is None else generation_config
        texts = self.generator.generate(prompts, base, **kwargs)
        n = len(texts) // len(prompts)  # num_return_sequences
        results = []
        for i, prompt in enumerate(prompts):
            rows = texts[i * n:(i + 1) * n]
            if not return_full_text:
                # the continuation alone: what `tokenizer.join_continuation` put after the prompt,
                # without the one joining space it adds between two Latin words
                rows = [t[len(prompt):].removeprefix(" ") for t in rows]
            results.append([{"generated_text": t} for t in rows])
        return results[0] if single else results


def pipeline(task: str, model, generation_config: GenerationConfig | None = None, *, weights: str | None = None,
             **defaults) -> TextGenerationPipeline:
    """model: a pt2tf OUT_DIR, a tf2/ or tf1/ folder, or a loaded `Generator`.

    weights: "fp32" (default), "bf16" or "int8", as in `Generator.from_pretrained`; with a loaded
    Generator it must be what that one was loaded with (it is not re-quantised).
    generation_config and keyword arguments (e.g. `max_new_tokens=50, do_sample=True`, and
    `return_full_text`) become per-call defaults.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if isinstance(model, Generator):
        if weights is not None and weights != model.weights:
            raise ValueError(f"weights={weights!r}, but the Generator given was loaded with weights={model.weights!r}")
        generator = model
    else:
        generator = Generator.from_pretrained(model, weights="fp32" if weights is None else weights)
    return TextGenerationPipeline(generator, generation_config, **defaults)
