"""Tests for cngpt_tf.formats.torch_pickle: torch `.bin` files read and written without torch."""

import io
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from cngpt_tf.errors import CheckpointError, UnsafePickleError
from cngpt_tf.formats import torch_pickle
from cngpt_tf.formats.torch_pickle import load_state_dict, save_state_dict

torch = pytest.importorskip("torch")


def _np(t):
    """torch tensor -> numpy, going through float32 for bfloat16 (which numpy lacks)."""
    if t.dtype == torch.bfloat16:
        return t.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().numpy()


def _assert_same(got, ref):
    assert got.keys() == ref.keys()
    for key, t in ref.items():
        want = _np(t)
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        assert got[key].flags.c_contiguous, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


@pytest.fixture(scope="module")
def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _rewrite_zip(src, dst, edit, compression=zipfile.ZIP_STORED):
    """Copy a zip archive, passing each (name, data) through `edit` (None drops the record)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            out = edit(info.filename, zin.read(info))
            if out is not None:
                zout.writestr(info.filename, out)
    return dst


def _assert_one_line_error(excinfo, path):
    msg = str(excinfo.value)
    assert os.path.basename(str(path)) in msg
    assert "\n" not in msg


# ---------------------------------------------------------------- reading torch's files


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_gpt2_state_dict(tmp_path, gpt2, legacy):
    sd = gpt2.state_dict()
    path = _save(sd, tmp_path / "pytorch_model.bin", legacy)
    _assert_same(load_state_dict(path), sd)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_dtypes(tmp_path, legacy):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, generator=g)
    sd = {
        "f16": x.half(), "bf16": x.bfloat16(), "f32": x, "f64": x.double(),
        "i64": torch.arange(-3, 3), "i32": torch.arange(4, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
    }
    _assert_same(load_state_dict(_save(sd, tmp_path / "d.bin", legacy)), sd)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_views_sharing_one_storage(tmp_path, legacy):
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"x": x, "t": x.t(), "slice": x[1:, ::2], "row": x[2], "col": x[:, 3],
          "bf": x.bfloat16()[1:, 1::3]}
    path = _save(sd, tmp_path / "v.bin", legacy)
    if not legacy:
        with zipfile.ZipFile(path) as zf:  # one storage for the four float32 views
            assert len([n for n in zf.namelist() if "/data/" in n]) == 2
    _assert_same(load_state_dict(path), sd)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_zero_dim_and_empty(tmp_path, legacy):
    sd = {"scalar": torch.tensor(2.5), "bf_scalar": torch.tensor(-1.0, dtype=torch.bfloat16),
          "empty": torch.zeros(0), "empty3": torch.zeros(2, 0, 3),
          "i_empty": torch.zeros(0, 4, dtype=torch.int64)}
    _assert_same(load_state_dict(_save(sd, tmp_path / "z.bin", legacy)), sd)


def test_nested_state_dict_is_unwrapped(tmp_path):
    sd = {"w": torch.ones(2, 2)}
    _assert_same(load_state_dict(_save({"state_dict": sd}, tmp_path / "n.bin")), sd)


def test_non_tensor_entry_is_rejected(tmp_path):
    path = _save({"w": torch.ones(2), "epoch": 3}, tmp_path / "mixed.bin")
    with pytest.raises(CheckpointError, match="epoch") as excinfo:
        load_state_dict(path)
    _assert_one_line_error(excinfo, path)


def test_big_endian_byteorder_record(tmp_path):
    sd = {"f": torch.randn(3, 2), "bf": torch.randn(4).bfloat16(), "i": torch.arange(3)}
    little = _save(sd, tmp_path / "le.bin")
    # torch keys the storages 0, 1, 2 in the order it meets them
    itemsizes = {f"data/{i}": t.element_size() for i, t in enumerate(sd.values())}

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        rec = name.split("/", 1)[1]
        if rec in itemsizes:
            return np.frombuffer(data, f"u{itemsizes[rec]}").byteswap().tobytes()
        return data

    _assert_same(load_state_dict(_rewrite_zip(little, tmp_path / "be.bin", to_big)), sd)


def test_recompressed_archive_loads(tmp_path, gpt2):
    """torch stores its records uncompressed, but a zip tool may deflate them: still read."""
    sd = gpt2.state_dict()
    stored = _save(sd, tmp_path / "stored.bin")
    deflated = _rewrite_zip(stored, tmp_path / "deflated.bin", lambda n, d: d, zipfile.ZIP_DEFLATED)
    _assert_same(load_state_dict(deflated), sd)


def test_storage_records_read_only_as_far_as_needed(tmp_path, monkeypatch):
    big = torch.arange(1_000_000, dtype=torch.float32)
    path = _save({"head": big[:4], "pair": big[10:12]}, tmp_path / "slices.bin")  # torch keeps all 4 MB
    asked = []
    real = torch_pickle._read_record
    monkeypatch.setattr(torch_pickle, "_read_record",
                        lambda zf, info, n: asked.append((info.filename.split("/", 1)[1], n)) or real(zf, info, n))
    got = load_state_dict(path)
    assert got["head"].tolist() == [0, 1, 2, 3] and got["pair"].tolist() == [10, 11]
    assert ("data/0", 12 * 4) in asked  # up to the last element any view of it reaches, no further


# ---------------------------------------------------------------- writing


ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f16": np.linspace(-2, 2, 5, dtype=np.float16),
    "bf16": np.linspace(-3, 3, 6).astype(ml_dtypes.bfloat16).reshape(2, 3),
    "f64": np.array([1e-300, 2.0]),
    "i64": np.array([-(2**40), 7], dtype=np.int64),
    "i32": np.array([[1, -2]], dtype=np.int32),
    "i16": np.array([3, -3], dtype=np.int16),
    "i8": np.array([-128, 127], dtype=np.int8),
    "u8": np.array([0, 255], dtype=np.uint8),
    "bool": np.array([True, False]),
    "scalar": np.array(1.25, dtype=np.float32),
    "empty": np.zeros((2, 0, 3), dtype=np.float32),
    "big_endian": np.arange(4, dtype=">f4"),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
}


def test_save_then_torch_load(tmp_path):
    path = tmp_path / "ours.bin"
    save_state_dict(ARRAYS, path)
    for mmap in (False, True):
        back = torch.load(path, weights_only=True, mmap=mmap)
        assert back.keys() == ARRAYS.keys()
        for key, arr in ARRAYS.items():
            got = _np(back[key])
            assert got.shape == arr.shape and got.dtype == arr.dtype.newbyteorder("="), key
            assert back[key].is_contiguous(), key
            np.testing.assert_array_equal(got, arr, err_msg=key)


def test_save_then_load(tmp_path):
    path = tmp_path / "ours.bin"
    save_state_dict(ARRAYS, path)
    got = load_state_dict(path)
    assert got.keys() == ARRAYS.keys()
    for key, arr in ARRAYS.items():
        assert got[key].shape == arr.shape and got[key].dtype == arr.dtype.newbyteorder("="), key
        np.testing.assert_array_equal(got[key], arr, err_msg=key)
    assert os.listdir(tmp_path) == ["ours.bin"]  # the .tmp file was renamed away


def test_saved_layout_matches_torch(tmp_path):
    path = tmp_path / "ours.bin"
    save_state_dict({"a": ARRAYS["f32"], "b": ARRAYS["i8"]}, path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[0] == "archive/data.pkl" and names[-1] == "archive/version"
        assert {"archive/byteorder", "archive/data/0", "archive/data/1"} <= set(names)
        assert zf.read("archive/byteorder") == b"little"
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            if "/data/" in info.filename:  # the local header's extra field pads data to 64 bytes
                with open(path, "rb") as f:
                    f.seek(info.header_offset + 26)
                    name_len, extra_len = np.frombuffer(f.read(4), "<u2")
                start = info.header_offset + 30 + int(name_len) + int(extra_len)
                assert start % 64 == 0, info.filename


def test_save_rejects_unsupported_dtype_and_leaves_nothing(tmp_path):
    path = tmp_path / "bad.bin"
    with pytest.raises(CheckpointError, match="complex"):
        save_state_dict({"ok": np.zeros(2, np.float32), "c": np.zeros(2, np.complex64)}, path)
    assert os.listdir(tmp_path) == []


def test_from_pretrained_reads_our_file(tmp_path, gpt2):
    transformers = pytest.importorskip("transformers")
    gpt2.config.save_pretrained(tmp_path)
    state = {k: _np(v) for k, v in gpt2.state_dict().items()}
    save_state_dict(state, tmp_path / "pytorch_model.bin")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 5, 9, 42, 99, 0, 7]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, gpt2(ids).logits, rtol=0, atol=0)


def test_never_imports_torch(tmp_path):
    """Load and save in a fresh interpreter where `import torch` fails."""
    src = _save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "in.bin")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from cngpt_tf.formats.torch_pickle import load_state_dict, save_state_dict\n"
        f"sd = load_state_dict({str(src)!r})\n"
        f"save_state_dict(sd, {str(tmp_path / 'out.bin')!r})\n"
        f"assert (load_state_dict({str(tmp_path / 'out.bin')!r})['w'] == sd['w']).all()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ---------------------------------------------------------------- hostile and broken input


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _legacy_stream(*objs):
    """A legacy-format file: magic, protocol, sys_info, then `objs` pickled in turn."""
    buf = io.BytesIO()
    sizes = {"short": 2, "int": 4, "long": 4}
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": sizes}
    for obj in (0x1950A86A20F9469CFC6C, 1001, sys_info, *objs):
        pickle.dump(obj, buf, protocol=2)
    return buf.getvalue()


def _torch_like_zip(path, data_pkl):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
    return path


@pytest.mark.parametrize("layout", ["zip", "legacy", "legacy_first_pickle"])
def test_os_system_is_refused(tmp_path, layout):
    pwned = tmp_path / "pwned"
    evil = _Evil(os.system, f"touch {pwned}")
    path = tmp_path / "pytorch_model.bin"
    if layout == "zip":
        _torch_like_zip(path, pickle.dumps(evil, protocol=2))
    elif layout == "legacy":
        path.write_bytes(_legacy_stream({"w": evil}, []))
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    refused = r"refusing to unpickle global '(posix|nt)\.system'"
    with pytest.raises(UnsafePickleError, match=refused) as excinfo:
        load_state_dict(path)
    _assert_one_line_error(excinfo, path)
    assert not pwned.exists()


def test_builtins_eval_is_refused(tmp_path):
    evil = pickle.dumps({"w": _Evil(eval, "1+1")}, protocol=2)
    path = _torch_like_zip(tmp_path / "evil.bin", evil)
    with pytest.raises(UnsafePickleError, match="builtins.eval") as excinfo:
        load_state_dict(path)
    _assert_one_line_error(excinfo, path)


def test_unknown_storage_type(tmp_path):
    good = _save({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "complex.bin")
    with pytest.raises(CheckpointError, match="ComplexFloatStorage") as excinfo:
        load_state_dict(good)
    assert not isinstance(excinfo.value, UnsafePickleError)
    _assert_one_line_error(excinfo, good)


def _broken_files(tmp_path, gpt2):
    good = _save(gpt2.state_dict(), tmp_path / "good.bin")
    legacy = _save(gpt2.state_dict(), tmp_path / "good_legacy.bin", legacy=True)
    files = {
        "truncated_zip.bin": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_legacy.bin": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "random.bin": np.random.default_rng(0).bytes(4096),
        "empty.bin": b"",
        "text.bin": b"hello, this is not a checkpoint\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    edits = {  # file name -> (record it changes, what becomes of that record)
        "no_blob.bin": ("/data/0", lambda d: None),
        "short_blob.bin": ("/data/0", lambda d: d[:-4]),
        "no_pickle.bin": ("/data.pkl", lambda d: None),
        "bad_pickle.bin": ("/data.pkl", lambda d: d[: len(d) // 2]),
    }
    for name, (rec, edit) in edits.items():
        _rewrite_zip(good, tmp_path / name, lambda n, d: edit(d) if n.endswith(rec) else d)
    return [*files, *edits, "missing.bin"]


def test_broken_files_raise_one_line_checkpoint_error(tmp_path, gpt2):
    for name in _broken_files(tmp_path, gpt2):
        path = tmp_path / name
        with pytest.raises(CheckpointError) as excinfo:
            load_state_dict(path)
        _assert_one_line_error(excinfo, path)
        if name == "missing.bin":
            assert str(excinfo.value) == f"{path}: file not found"
        if name in ("no_blob.bin", "short_blob.bin"):
            assert "data/0" in str(excinfo.value) or "too short" in str(excinfo.value)
