"""TF Serving warmup records: `assets.extra/tf_serving_warmup_requests`, one request per signature.

The model server replays these when it loads the model, so the XLA compile of the decode loop
happens at load time rather than on the first user's request. The file is a TFRecord of serialized
`PredictionLog` protos (tensorflow-serving-api).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ..config import GPT2Config

WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
PROMPT = "明月几时有，"


def warmup_inputs(config: GPT2Config, signature: str) -> dict[str, np.ndarray]:
    """One batch-1 request for `signature`, shaped like a typical prompt."""
    if signature == "poem":
        return {"text": np.array([b""], dtype=object), "form": np.array(["五言绝句".encode()], dtype=object),
                "acrostic": np.array([b""], dtype=object), "rhyme": np.array([b"auto"], dtype=object),
                "seed": np.array([0], np.int64)}
    if signature in ("serving_default", "serving_seeded"):
        inputs = {"text": np.array([PROMPT.encode("utf-8")], dtype=object)}
        if signature == "serving_seeded":
            inputs["seed"] = np.array([0], np.int64)
        return inputs
    ids = (np.arange(8, dtype=np.int32) * 7 + 200) % config.n_vocab
    ids[0] = config.bos_token_id or 0
    return {"input_ids": ids[None], "attention_mask": np.ones((1, 8), np.int32)}


def write_warmup_requests(saved_model_dir: Path, config: GPT2Config, signatures: list[str]) -> Path:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = saved_model_dir / WARMUP
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in signatures:
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
            for name, value in warmup_inputs(config, signature).items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
