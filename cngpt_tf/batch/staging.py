"""The model folder where a worker can load it: a local path as is; any other path Beam's
filesystems read (gs://, s3://, hdfs://, ...) copied once per process into a temporary folder.

Only the folder `registry.detect` would load is copied: a pt2tf OUT_DIR's `tf2/`, else its `tf1/`,
else the files of the folder itself (an HF TF GPT-2 folder). `weights=False` copies the small files
only (config, vocab, generation settings): what the launcher reads to check the flags.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from ..errors import SourceError

WEIGHT_PREFIXES = ("tf_model.h5", "model.ckpt")  # tf2's weights; tf1's checkpoint files
_lock = threading.Lock()
_staged: dict[tuple[str, bool], Path] = {}


def local_model(path: str, weights: bool = True) -> Path:
    """A local folder holding the model at `path` (see the module docstring)."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) is None:
        return Path(path)
    with _lock:
        key = (path, weights)
        if key not in _staged:
            _staged[key] = copy_model(path, Path(tempfile.mkdtemp(prefix="cngpt_batch_model_")), weights)
            atexit.register(shutil.rmtree, _staged[key].parent, True)
        return _staged[key]


def copy_model(path: str, into: Path, weights: bool = True) -> Path:
    """Copy the loadable folder of `path` (any Beam filesystem) into `into`/model; return that."""
    from apache_beam.io.filesystems import FileSystems

    base = path.rstrip("/")
    found = {m.path[len(base) + 1:]: m.path for m in FileSystems.match([base + "/**"])[0].metadata_list
             if m.path.startswith(base + "/")}
    for sub in ("tf2/", "tf1/", ""):
        files = {name[len(sub):]: full for name, full in found.items()
                 if name.startswith(sub) and "/" not in name[len(sub):]}
        if files:
            break
    else:
        raise SourceError(f"{path}: no model files there")
    target = into / "model"
    target.mkdir(parents=True)
    for name, full in sorted(files.items()):
        if not weights and name.startswith(WEIGHT_PREFIXES):
            continue
        with FileSystems.open(full, compression_type="uncompressed") as src, open(target / name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target
