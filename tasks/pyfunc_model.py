"""The served model: an MLflow pyfunc that loads the S constituents and aggregates.

Logged as MLflow "models from code": MLflow stores this file and runs it on load
(``set_model`` below), so no Python object is pickled. The core package it imports is the
artifact ``code``, a zip (``tasks.tracking.code_archive``) put on ``sys.path`` here.

Input: images as an array or DataFrame, either (N, C, H, W) uint8 or flattened
(N, C*H*W) pixel values in 0..255. Output: predicted class indices (N,), or with
``params={"output": "probabilities"}`` the aggregated class probabilities (N, K) the
prediction is the argmax of: what an auditor needs for a loss-based membership test,
and what ``unlearnflow audit`` scores (see ``OUTPUTS``).
"""

import json
import sys

import mlflow.models
import mlflow.pyfunc
import numpy as np


OUTPUTS = ("classes", "probabilities")  # params={"output": ...}; the signature declares it


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        code = context.artifacts.get("code")  # the core package as one zip (versions logged before it: code/)
        if code and code not in sys.path:
            sys.path.insert(0, code)
        from unlearnflow.ensemble import Ensemble, load_constituent

        spec = json.loads(open(context.artifacts["ensemble"]).read())
        paths = [context.artifacts[f"shard_{c['shard']}"] for c in spec["constituents"]]
        self.ensemble = Ensemble.from_files(paths, spec["method"], spec["classes"])
        self.input_shape = tuple(load_constituent(paths[0])[1]["spec"]["input_shape"])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None):
        # np.ndarray: a hint MLflow infers no schema from (the signature is declared at logging),
        # so it neither validates nor warns; predict() reshapes and checks the input itself
        output = (params or {}).get("output", "classes")
        if output not in OUTPUTS:
            raise ValueError(f"params output = {output!r} is invalid: expected one of {', '.join(OUTPUTS)}")
        x = np.asarray(model_input)
        x = x.reshape((len(x), *self.input_shape)).astype(np.uint8)  # (N, C, H, W)
        scores = self.ensemble.scores(x)  # (N, K)
        return scores if output == "probabilities" else scores.argmax(axis=1)


mlflow.models.set_model(EnsemblePyfunc())
