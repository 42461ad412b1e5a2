"""A local stand-in for the TF model server, for tests: no real `tensorflow_model_server` can run here
(no Docker engine; the binary is on neither PyPI nor Debian). It serves one SavedModel, loaded with
`tf.saved_model.load`, over the REST predict API (`instances` and `inputs` formats) and the gRPC
PredictionService, on 127.0.0.1 ports chosen by the OS. Bad requests get an error reply; the
server keeps running.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf


class StandIn:
    def __init__(self, saved_model_dir, model_name: str = "cngpt"):
        self.model = tf.saved_model.load(str(saved_model_dir))
        self.model_name = model_name
        self.lock = threading.Lock()

    def predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fn = self.model.signatures[signature]
        specs = fn.structured_input_signature[1]
        tensors = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()}
        with self.lock:
            return {k: v.numpy() for k, v in fn(**tensors).items()}

    # ----- REST ---------------------------------------------------------------------------------

    def start_rest(self) -> str:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                expected = f"/v1/models/{stand_in.model_name}:predict"
                if self.path != expected:
                    return self._reply(404, {"error": f"no such path {self.path}"})
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8"))
                    signature = body.get("signature_name", "serving_default")
                    if "instances" in body:  # row format: a list of rows (or of bare values)
                        rows = body["instances"]
                        inputs = _columns(rows)
                        out = stand_in.predict(signature, inputs)
                        return self._reply(200, {"predictions": _rows(out)})
                    inputs = {k: np.asarray(_encode(v)) for k, v in body["inputs"].items()}
                    out = stand_in.predict(signature, inputs)
                    # Like the real server: a single output is given bare, several by name.
                    outputs = {k: _jsonable(v) for k, v in out.items()}
                    return self._reply(200, {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs})
                except Exception as e:  # noqa: BLE001 — like the real server: an error reply, not a crash
                    return self._reply(400, {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})

            def _reply(self, code, payload):
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    # ----- gRPC ---------------------------------------------------------------------------------

    def start_grpc(self) -> str:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        stand_in = self

        class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                try:
                    out = stand_in.predict(request.model_spec.signature_name or "serving_default", inputs)
                except Exception as e:  # noqa: BLE001
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e).splitlines()[0][:300])
                reply = predict_pb2.PredictResponse()
                for k, v in out.items():
                    reply.outputs[k].CopyFrom(tf.make_tensor_proto(v))
                return reply

        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), self.grpc_server)
        port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()
        return f"127.0.0.1:{port}"

    def stop(self):
        if hasattr(self, "http"):
            self.http.shutdown()
            self.http.server_close()
        if hasattr(self, "grpc_server"):
            self.grpc_server.stop(0)


def _encode(value):
    """JSON strings become UTF-8 bytes, as the real server turns them into DT_STRING tensors."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _columns(rows: list) -> dict[str, np.ndarray]:
    if rows and isinstance(rows[0], dict):
        return {k: np.asarray([_encode(r[k]) for r in rows]) for k in rows[0]}
    return {"text": np.asarray([_encode(r) for r in rows], dtype=object)}


def _rows(out: dict[str, np.ndarray]) -> list:
    if len(out) == 1:
        return _jsonable(next(iter(out.values())))
    n = len(next(iter(out.values())))
    return [{k: _jsonable(v[i]) for k, v in out.items()} for i in range(n)]


def _jsonable(value):
    value = np.asarray(value)
    if value.dtype == object:
        return [b.decode("utf-8", "replace") if isinstance(b, bytes) else _jsonable(b) for b in value.tolist()] \
            if value.ndim else value.item().decode("utf-8", "replace")
    return value.tolist()
