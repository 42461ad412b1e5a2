"""Bind `tf.keras` to Keras 2 (`tf_keras`) before anything touches `tf.keras`.

HF's TF model classes are written for Keras 2. With TensorFlow 2.16+ a plain `tf.keras` is Keras 3,
and mixing the two fails at model build time. TensorFlow reads this variable lazily, on the first
`tf.keras` access, so importing this module first makes a user's plain `import cngpt_tf` work.
An explicit setting by the user wins (`setdefault`).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# The CLIs quieten TensorFlow's native log further (cli.quiet_tensorflow) unless the user chose a level.
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ INFO banner on every import
