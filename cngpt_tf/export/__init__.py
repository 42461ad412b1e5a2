"""From a PyTorch release to TensorFlow files, and back: the library behind `converters/`' CLIs.

- `convert.convert`: read a release (folder, zip, URL, hub id), write `tf1/`, `tf2/` and
  `saved_model/<version>/` into a temporary workspace, reload each and compare its logits with the
  source (`verify`), then rename the workspace into place (`output`).
- `convert_back.convert_back`: a `tf1/` or `tf2/` folder -> PyTorch files.
- `saved_model`: the TF Serving SavedModel and its signatures; `warmup`: its warm-up requests.
- `output`: where OUT_DIR may be, the workspace, the final rename.
"""
