"""cngpt-tf: Chinese GPT-2 models in TensorFlow — conversion, XLA generation, serving.

Importing this package binds `tf.keras` to Keras 2 (`tf_keras`), which HF's TF model classes need;
see `cngpt_tf._keras_env`.
"""

from . import _keras_env  # noqa: F401  (must run before anything imports tensorflow)

__version__ = "0.1.0"
