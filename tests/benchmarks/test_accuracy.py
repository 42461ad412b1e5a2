"""The pure parts of benchmarks/accuracy.py: no model, no peer engine needed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy import (Engine, all_keys, chosen, compare, footer, format_table, perplexity,
                                 relative_error, token_log_probs, tokens_before_difference, verdict)


def test_token_log_probs_scores_each_next_token_from_the_previous_position():
    # vocab 3; position 0 predicts ids[1], position 1 predicts ids[2]; the last position predicts nothing
    logits = np.array([[[0.0, 0.0, 0.0], [np.log(2.0), 0.0, np.log(5.0)], [9.0, 9.0, 9.0]]])
    ids = np.array([[0, 1, 2]])
    out = token_log_probs(logits, ids)
    assert out.shape == (1, 2) and out.dtype == np.float64
    np.testing.assert_allclose(out, [[np.log(1 / 3), np.log(5 / 8)]])


def test_token_log_probs_is_stable_for_large_logits():
    logits = np.array([[[1e4, 1e4 - np.log(3.0)], [0.0, 0.0]]])  # a naive exp(1e4) overflows to inf
    out = token_log_probs(logits, np.array([[0, 1]]))
    np.testing.assert_allclose(out, [[np.log(1 / 4)]], rtol=1e-9)  # p = (1/3) / (1 + 1/3)


def test_perplexity_is_exp_of_the_mean_negative_log_likelihood():
    assert perplexity(np.full((3, 5), np.log(1 / 4))) == pytest.approx(4.0)
    assert perplexity(np.log([[0.5, 0.125]])) == pytest.approx(4.0)  # geometric mean of 2 and 8
    # a uniform model over V words has perplexity V, whatever its logits' offset
    logits = np.full((2, 6, 50), 7.0)
    ids = np.random.RandomState(0).randint(0, 50, size=(2, 6))
    assert perplexity(token_log_probs(logits, ids)) == pytest.approx(50.0)


def test_relative_error_is_the_max_difference_over_the_max_reference():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]])
    out = ref + np.array([[0.0, 0.02], [-0.04, 0.0]])
    assert relative_error(out, ref) == pytest.approx(0.04 / 4.0)
    assert relative_error(ref, ref) == 0.0
    with pytest.raises(ValueError, match="shape"):
        relative_error(ref[:1], ref)


def test_tokens_before_difference_counts_up_to_the_first_mismatch_only():
    ref = np.arange(20).reshape(4, 5)
    got = ref.copy()
    got[1, 0] = -1  # differs at once
    got[2, 3] = -1  # differs from token 3 on, though token 4 matches again
    got[3, 2:] = -1
    np.testing.assert_array_equal(tokens_before_difference(got, ref), [5, 0, 3, 2])
    with pytest.raises(ValueError, match="shape"):
        tokens_before_difference(got[:, :4], ref)


def test_verdict_judges_each_precision_by_its_own_bar_in_both_directions():
    assert verdict("bf16", 0.0019) == "PASS" and verdict("bf16", -0.0019) == "PASS"
    assert verdict("bf16", 0.0021) == "FAIL" and verdict("bf16", -0.0021) == "FAIL"
    assert verdict("int8", 0.0099) == "PASS" and verdict("int8", 0.0021) == "PASS"  # int8's bar is 1%
    assert verdict("int8", -0.011) == "FAIL"
    assert verdict("fp32", 0.5) == "—"  # fp32 has no bar
    assert verdict("int8", None) == "—"  # no perplexity (the random shape)


def _result(logits, tokens, ppl):
    return {"logits": np.asarray(logits, np.float32), "tokens": np.asarray(tokens), "ppl": ppl}


def test_compare_gives_a_rows_numbers_against_the_reference():
    ref = _result([[2.0, -1.0]], [[1, 2, 3], [4, 5, 6]], 100.0)
    got = _result([[2.0, -1.5]], [[1, 2, 3], [4, 9, 6]], 101.0)
    numbers = compare(got, ref)
    assert numbers["err"] == pytest.approx(0.25)
    assert (numbers["identical"], numbers["runs"], numbers["before"]) == (1, 2, 2.0)  # (3 + 1) / 2
    assert numbers["ppl"] == 101.0 and numbers["change"] == pytest.approx(0.01)
    assert compare(ref, ref)["change"] == 0.0 and compare(ref, ref)["identical"] == 2
    assert compare(_result([[2.0, -1.0]], [[1, 2, 3], [4, 5, 6]], None), ref)["change"] is None


def test_format_table_marks_bars_and_shows_failed_rows_with_their_reason():
    base = {"model": "demo", "engine": "llama.cpp"}
    rows = [dict(base, weights="F32", precision="fp32", err=1.3e-4, identical=32, runs=32, before=64.0, ppl=107.9591,
                 change=0.0, note=""),
            dict(base, weights="Q8_0", precision="int8", err=4.48e-3, identical=6, runs=8, before=55.375, ppl=107.956,
                 change=-3e-5, note=""),
            dict(base, weights="BF16", precision="bf16", err=1e-3, identical=8, runs=8, before=64.0, ppl=108.5,
                 change=0.005, note=""),
            dict(base, engine="CTranslate2", weights="int8_float32", precision="int8",
                 note="ModuleNotFoundError: No module named 'ctranslate2'")]
    lines = format_table(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["model", "engine", "weights", "max rel logits err", "greedy = fp32",
                        "tokens before a difference", "perplexity", "vs fp32", "bar", "note"]
    assert set(lines[1]) == {"|", "-"}
    assert cells[2] == ["demo", "llama.cpp", "F32", "1.30e-04", "32/32", "64.0", "107.959", "+0.000%", "—", ""]
    assert cells[3][3:9] == ["4.48e-03", "6/8", "55.4", "107.956", "-0.003%", "PASS"]
    assert cells[4][7:9] == ["+0.500%", "FAIL"]  # bf16's bar is 0.2%
    assert cells[5] == ["demo", "CTranslate2", "int8_float32", "—", "—", "—", "—", "—", "—",
                        "ModuleNotFoundError: No module named 'ctranslate2'"]
    assert len({len(line) for line in lines}) == 1  # columns padded to one width
    assert footer(rows).endswith(": 1/2 PASS")  # the fp32 row and the failed one are not judged


def _engine(key):
    return Engine(key, "e", "w", "fp32", lambda: None)


def test_chosen_keeps_the_reference_and_picks_keys_and_families():
    engines = [_engine(k) for k in ("cngpt", "cngpt-bf16", "cngpt-int8", "cngpt-int8-g32", "llama", "llama-q8_0")]

    def keys(only):
        return [e.key for e in chosen(engines, only)]

    assert keys(None) == [e.key for e in engines]
    assert keys(["llama"]) == ["cngpt", "llama", "llama-q8_0"]  # the reference always first
    assert keys(["cngpt-int8"]) == ["cngpt", "cngpt-int8", "cngpt-int8-g32"]
    assert keys(["ort"]) == ["cngpt"]


def test_all_keys_name_every_row_once_without_a_model():
    keys = all_keys([32, 256])
    assert keys[0] == "cngpt" and len(keys) == len(set(keys))
    assert {"cngpt-bf16", "cngpt-int8", "cngpt-int8-g32", "cngpt-int8-g256", "torch", "llama", "llama-bf16",
            "llama-q8_0", "ort", "ort-int8", "ct2", "ct2-int8"} == set(keys) - {"cngpt"}
