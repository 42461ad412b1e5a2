"""`cngpt_tf.pipeline`: return_full_text=False gives the continuation alone, decoded from the new tokens."""

from __future__ import annotations

import pytest

import cngpt_tf
from cngpt_tf.generator import Generator


@pytest.fixture(scope="module")
def generator(converted):
    return Generator.from_pretrained(converted)


@pytest.mark.parametrize("prompt", ["明月几时有，", "hello world", "hello ", "abc [SEP] x", ""])
def test_the_continuation_alone_is_the_decode_of_the_new_tokens(generator, prompt):
    pipe = cngpt_tf.pipeline("text-generation", model=generator, max_new_tokens=6)
    full = pipe(prompt)[0]["generated_text"]
    alone = pipe(prompt, return_full_text=False)[0]["generated_text"]
    ids = generator.tokenizer.encode(prompt)
    new = generator.generate_ids([ids], max_new_tokens=6)[0, len(ids):]
    assert alone == generator.tokenizer.decode(new)
    assert full.startswith(prompt) and full.endswith(alone)
    assert len(full) - len(prompt) - len(alone) in (0, 1)  # at most the one joining space
