"""cngpt-tf: Chinese GPT-2 models in TensorFlow — conversion, XLA generation, serving.

Importing this package binds `tf.keras` to Keras 2 (`tf_keras`), which HF's TF model classes need;
see `cngpt_tf._keras_env`.
"""

from . import _keras_env  # noqa: F401  (must run before anything imports tensorflow)

__version__ = "0.1.0"

_LAZY = {
    "pipeline": ("text_generation", "pipeline"),
    "Generator": ("generator", "Generator"),
    "ChineseTokenizer": ("tokenizer", "ChineseTokenizer"),
    "GPT2Config": ("config", "GPT2Config"),
}


def __getattr__(name):
    """Import the heavy parts (TensorFlow, transformers) on first use, not on `import cngpt_tf`."""
    if name not in _LAZY:
        raise AttributeError(f"module 'cngpt_tf' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value
