"""Install cngpt-tf: `pip install -e .` (library + converters), `pip install -e .[dev]` (tests)."""

from setuptools import find_packages, setup

setup(
    name="cngpt-tf",
    version="0.1.0",
    description="Chinese GPT-2 models in TensorFlow: PyTorch->TF converters, XLA generation, TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cngpt_tf", "cngpt_tf.*", "converters", "converters.*"]),
    # The native kernel's C++ source is compiled on first use (cngpt_tf/native.py), not at install;
    # data/ holds the rhyme table and the embedded demo release (cngpt_tf/demo.py).
    package_data={"cngpt_tf": ["csrc/*.cc", "csrc/*.h", "data/*.json", "data/*.zip"]},
    install_requires=[
        # The full package: tensorflow-cpu conflicts with tf-keras, which requires `tensorflow`.
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        # 4.57 is the last line that ships the TF model classes (TFGPT2LMHeadModel).
        "transformers>=4.57,<5",
        "numpy",
        "h5py",
        "safetensors",
        "tqdm",
        # tf.summary's writers, which Keras' TensorBoard callback (cngpt_tf.finetune) needs: TF 2.21
        # no longer pulls it in.
        "tensorboard==2.21.*",
        # PredictionLog protos for the SavedModel's TF Serving warmup records, and the gRPC client.
        "tensorflow-serving-api==2.21.*",
    ],
    extras_require={
        # torch is pinned: on these machines 2.13.0 is the CPU wheel on disk; an unpinned torch pulls
        # a multi-GB CUDA build. It is a test dependency only: converting never imports it.
        "dev": ["pytest", "hypothesis", "torch==2.13.0", "nbclient", "nbformat", "ipykernel", "matplotlib"],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        # Apache Beam for `python -m cngpt_tf.batch` (2.77 resolves with tensorflow 2.21, numpy 2.4; it
        # pins protobuf < 7 and pillow < 13, so installing it downgrades both).
        "beam": ["apache-beam==2.77.*"],
        # The peers of benchmarks/peers.py and benchmarks/accuracy.py (not needed by the library or the
        # tests). llama-cpp-python compiles llama.cpp from source: cmake and g++, ~11 min on 2 cores.
        "bench": ["torch==2.13.0", "onnxruntime==1.32.0", "optimum==2.1.0", "optimum-onnx==0.1.0", "onnx==1.23.2",
                  "ctranslate2==4.8.5", "llama-cpp-python==0.3.36", "gguf==0.19.0"],
    },
    entry_points={
        "console_scripts": [
            "cngpt-pt2tf=converters.pt2tf:main",
            "cngpt-tf2pt=converters.tf2pt:main",
            "cngpt-generate=cngpt_tf.generate:console",
            "cngpt-batch=cngpt_tf.batch.__main__:main",
        ]
    },
)
