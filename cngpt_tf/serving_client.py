"""`python -m cngpt_tf.serving_client`: send Chinese text to a running TF Serving model, print the reply.

REST by default (`POST /v1/models/<name>:predict`, the `instances` format); `--grpc HOST:PORT` uses
the PredictionService of tensorflow-serving-api instead. Both call the SavedModel's
`serving_default` signature (text in, generated text out) unless `--signature` says otherwise.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from . import cli
from .errors import SourceError

EXAMPLE = """\
example:
  docker run -p 8501:8501 -p 8500:8500 -v "$PWD/out/saved_model:/models/cngpt" -e MODEL_NAME=cngpt \\
      tensorflow/serving --xla_cpu_compilation_enabled=true
  python -m cngpt_tf.serving_client "明月几时有，" "床前明月光，"
  python -m cngpt_tf.serving_client "明月几时有，" --grpc localhost:8500
"""


def predict_rest(texts: list[str], url: str = "http://localhost:8501", model: str = "cngpt",
                 signature: str = "serving_default", timeout: float = 120.0) -> list[str]:
    body = json.dumps({"signature_name": signature, "instances": texts}, ensure_ascii=False).encode("utf-8")
    endpoint = f"{url.rstrip('/')}/v1/models/{model}:predict"
    request = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace").strip()
        raise SourceError(f"{endpoint}: HTTP {e.code}: {detail[:300]}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise SourceError(f"{endpoint}: cannot reach the model server ({getattr(e, 'reason', e)})") from None
    return [p if isinstance(p, str) else p.get("generated_text", "") for p in reply["predictions"]]


def predict_grpc(texts: list[str], target: str = "localhost:8500", model: str = "cngpt",
                 signature: str = "serving_default", timeout: float = 120.0) -> list[str]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([t.encode("utf-8") for t in texts]))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            reply = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            raise SourceError(f"{target}: gRPC {e.code().name}: {e.details()}") from None
    return [b.decode("utf-8") for b in tf.make_ndarray(reply.outputs["generated_text"]).tolist()]


def main(argv=None) -> int:
    parser = cli.make_parser(
        "python -m cngpt_tf.serving_client",
        "Send prompts to a TF Serving model exported by pt2tf and print the generated text.", EXAMPLE)
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--url", default="http://localhost:8501", help="REST endpoint (default %(default)s)")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at HOST:PORT instead of REST")
    parser.add_argument("--model", default="cngpt", help="MODEL_NAME of the server (default %(default)s)")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (default %(default)s)")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)

    def run():
        if args.grpc:
            texts = predict_grpc(args.prompts, args.grpc, args.model, args.signature, args.timeout)
        else:
            texts = predict_rest(args.prompts, args.url, args.model, args.signature, args.timeout)
        for text in texts:
            print(text)

    return cli.run_main(run)


if __name__ == "__main__":
    sys.exit(main())
