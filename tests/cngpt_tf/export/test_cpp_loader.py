"""The SavedModel served by a process with no Python: `tests/cpp/serve_signatures.cc`, built with g++ against
the pip TensorFlow's headers and libraries, loads `saved_model/1` with `tensorflow::LoadSavedModel` (the
model server's loader, tag "serve") and runs every signature by the tensor names of its SignatureDef.
Its outputs must equal `tf.saved_model.load` of the same folder: the same text and ids (greedy), logits
allclose. The binary is built once per session into a tmp folder, never into the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, named_tensor_pb2

SOURCE = Path(__file__).resolve().parents[2] / "cpp" / "serve_signatures.cc"
SIGNATURES = ("serving_default", "poem", "generate_ids", "logits")


def _ids_and_mask(prompts: list[list[int]]) -> dict[str, np.ndarray]:
    """Left-padded int32 `input_ids` and `attention_mask` [batch, longest]."""
    width = max(map(len, prompts))
    ids = np.array([[0] * (width - len(p)) + p for p in prompts], np.int32)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int32)
    return {"input_ids": ids, "attention_mask": mask}


# One batched request per signature, by input key. The keys must be the signature's own (checked
# against both loaders' SignatureDefs below): a signature that gains or renames an input needs a value here.
REQUESTS = {
    "serving_default": {"text": ["明月几时有，", "床前明月光，疑是地上霜。", "春"]},
    "poem": {"text": ["", "明月"], "form": ["五言绝句", "3,2"], "acrostic": ["明月几时", ""],
             "rhyme": ["auto", ""], "seed": [1, 1]},
    "generate_ids": _ids_and_mask([[101, 300, 400, 500, 600], [101, 700], [101, 800, 900]]),
    "logits": _ids_and_mask([[101, 300, 400, 500, 600, 700], [101, 800, 900]]),
}


def _tf_libraries() -> tuple[str, list[str]]:
    """(lib dir, the two shared libraries to link); skips when this TensorFlow ships no C++ API."""
    include, lib = tf.sysconfig.get_include(), tf.sysconfig.get_lib()
    needed = [Path(include, "tensorflow", "cc", "saved_model", "loader.h"),
              Path(lib, "libtensorflow_cc.so.2"), Path(lib, "libtensorflow_framework.so.2")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"the TensorFlow C++ headers/libraries are not installed: {', '.join(missing)}")
    return lib, [p.name for p in needed[1:]]


@pytest.fixture(scope="session")
def serve_binary(tmp_path_factory, request) -> Path:
    """The compiled serve_signatures, built once per session (-O0: it is thin glue; ~15 s of g++)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed: cannot build tests/cpp/serve_signatures.cc")
    lib, libraries = _tf_libraries()
    binary = tmp_path_factory.mktemp("cpp_loader") / "serve_signatures"
    command = [compiler, "-O0", *tf.sysconfig.get_compile_flags(), "-Wno-deprecated-declarations",
               "-Wno-interference-size", str(SOURCE), "-o", str(binary), f"-L{lib}", "-Wl,--no-as-needed",
               *(f"-l:{name}" for name in libraries), f"-Wl,-rpath,{lib}"]
    log = binary.parent / "g++.log"
    start = time.perf_counter()
    with log.open("w") as stream:
        build = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=binary.parent)
        try:
            request.getfixturevalue("converted")  # convert the tiny model while g++ runs (one core each)
            build.wait(timeout=600)
        finally:
            if build.poll() is None:
                build.kill()
                build.wait()
    assert build.returncode == 0, f"{' '.join(command)}\n{log.read_text()[-4000:]}"
    print(f"compiled {SOURCE.name} in {time.perf_counter() - start:.1f} s (alongside the conversion)")
    return binary


def _serve(binary: Path, saved_model: Path, *args: str, requests: str = "", timeout: float = 300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([str(binary), str(saved_model), *args], input=requests.encode("utf-8"),
                          capture_output=True, env=env, timeout=timeout)
    return done.returncode, done.stdout.decode("utf-8").splitlines(), done.stderr.decode("utf-8", "replace")


def _request_text(name: str, inputs: dict, specs: dict[str, tf.TensorSpec]) -> str:
    """A request block of serve_signatures: `run NAME`, one NamedTensorProto line per input, `end`."""
    lines = [f"run {name}"]
    for key, value in inputs.items():
        proto = named_tensor_pb2.NamedTensorProto(name=key, tensor=tf.make_tensor_proto(value, specs[key].dtype))
        lines.append(text_format.MessageToString(proto, as_one_line=True))
    return "\n".join(lines + ["end", ""])


def _parse_results(lines: list[str]) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray] | str]]:
    """serve_signatures' stdout -> ({"load" or signature: seconds}, {signature: {output key: array} or the
    error line})."""
    seconds, results, current = {}, {}, None
    for line in lines:
        if line.startswith("loaded "):
            seconds["load"] = float(line.split()[1])
        elif line.startswith("error "):
            results[line.split()[1]] = line
        elif line.startswith("result "):
            _, name, took = line.split()
            seconds[name] = float(took)
            current = results[name] = {}
        elif line == "end":
            current = None
        elif current is not None:
            named = text_format.Parse(line, named_tensor_pb2.NamedTensorProto())
            current[named.name] = tf.make_ndarray(named.tensor)
    return seconds, results


@pytest.fixture(scope="module")
def saved_model(converted) -> Path:
    return converted / "saved_model" / "1"


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(str(saved_model))


@pytest.fixture(scope="module")
def specs(loaded) -> dict[str, dict[str, tf.TensorSpec]]:
    """Each signature's input specs by key, as the Python loader sees them."""
    return {name: loaded.signatures[name].structured_input_signature[1] for name in SIGNATURES}


@pytest.fixture(scope="module")
def cpp_results(serve_binary, saved_model, specs):
    requests = "".join(_request_text(name, REQUESTS[name], specs[name]) for name in SIGNATURES)
    start = time.perf_counter()
    code, lines, stderr = _serve(serve_binary, saved_model, requests=requests)
    wall = time.perf_counter() - start
    assert code == 0, "\n".join(lines)[-2000:] + stderr[-4000:]
    seconds, results = _parse_results(lines)
    print(f"C++: process {wall:.1f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    return results


def test_binary_links_no_python(serve_binary):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd is not installed")
    linked = subprocess.run([ldd, str(serve_binary)], capture_output=True, text=True, check=True).stdout
    assert "libtensorflow_cc" in linked and "libpython" not in linked, linked


def test_cpp_reads_the_same_signature_defs(serve_binary, saved_model, specs):
    code, lines, stderr = _serve(serve_binary, saved_model, "--list")
    assert code == 0, stderr[-4000:]
    listed = {}
    for line in lines:
        if line.startswith("signature "):
            _, name, text = line.split(" ", 2)
            listed[name] = text_format.Parse(text, meta_graph_pb2.SignatureDef())
    assert set(SIGNATURES) <= set(listed), sorted(listed)
    for name in SIGNATURES:
        inputs = listed[name].inputs
        assert set(inputs) == set(specs[name]) == set(REQUESTS[name]), name
        for key, spec in specs[name].items():
            assert inputs[key].dtype == spec.dtype.as_datatype_enum, (name, key)
            assert inputs[key].name.endswith(":0"), (name, key)  # a graph tensor name, fed by name


@pytest.mark.parametrize("name", SIGNATURES)
def test_cpp_outputs_equal_python(cpp_results, loaded, specs, name):
    result = cpp_results[name]
    assert isinstance(result, dict), result  # else the error line the C++ run printed
    inputs = {key: tf.constant(value, specs[name][key].dtype) for key, value in REQUESTS[name].items()}
    expected = {key: value.numpy() for key, value in loaded.signatures[name](**inputs).items()}
    assert set(result) == set(expected)
    for key, want in expected.items():
        got = result[key]
        assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, want.shape)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=key)
        else:
            assert got.tolist() == want.tolist(), key
    if name in ("serving_default", "poem"):  # real text, not empty strings that would match trivially
        first = result[next(iter(result))].tolist()[0].decode("utf-8")
        assert len(first) > 2, first


def test_cpp_reports_a_bad_request_as_invalid_argument(serve_binary, saved_model, specs, loaded):
    """A request the signature rejects fails the same way in both: INVALID_ARGUMENT, the same reason."""
    bad = {**REQUESTS["poem"], "form": ["八言", "八言"]}
    inputs = {key: tf.constant(value, specs["poem"][key].dtype) for key, value in bad.items()}
    with pytest.raises(tf.errors.InvalidArgumentError) as python_error:
        loaded.signatures["poem"](**inputs)
    reason = re.search(r"assertion failed: \[([^\]]*)\]", python_error.value.message).group(1)
    assert "form" in reason, reason
    code, lines, _ = _serve(serve_binary, saved_model, requests=_request_text("poem", bad, specs["poem"]))
    errors = [line for line in lines if line.startswith("error poem ")]
    assert code == 1 and len(errors) == 1, lines
    assert "INVALID_ARGUMENT" in errors[0] and reason in errors[0], errors[0]


def test_generation_needs_the_xla_cpu_jit(serve_binary, saved_model, specs):
    """With XLA compilation disabled, as the model server without --xla_cpu_compilation_enabled=true,
    the jit_compile decode loop fails; the logits signature (no XLA) still runs."""
    requests = "".join(_request_text(name, REQUESTS[name], specs[name]) for name in ("generate_ids", "logits"))
    code, lines, stderr = _serve(serve_binary, saved_model, "--no_xla", requests=requests)
    _, results = _parse_results(lines)
    assert code == 1, lines
    assert "XLA compilation disabled" in results["generate_ids"], results["generate_ids"]
    assert isinstance(results["logits"], dict), lines
