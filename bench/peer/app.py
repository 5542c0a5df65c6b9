"""The Python peer of photolabel's HTTP benchmark.

The same `/labelling/img` contract (../shared/docs/api-contract.md), the same
ONNX backbone and heads file as photolabel (bench/peer/model.py), written the
way one would write it in Python: FastAPI + uvicorn, Pillow, NumPy,
onnxruntime. It exists to be measured against (scripts/bench.sh), so it
implements the upload endpoint with its key check and its 400/401/403/422
bodies; keys are kept in memory, and body-size limits are left to the proxy
in front.

Configuration (environment):
  PEER_MODEL        backbone ONNX file (default models/efficientnet-lite2.onnx)
  PEER_HEADS        heads file, format photolabel-heads/2 (default models/heads.json)
  PEER_API_KEYS     comma-separated accepted keys
  PEER_ORT_THREADS  ONNX Runtime intra-op threads per worker process (default 1)
  PEER_VIEWS        backbone passes per photo: 1 (default, what a team would
                    write) or 2 (the mirrored photo too, averaged)
  PEER_SECOND_SCENE_THRESHOLD   the 70 % rule, in percent (default 70)

Run: uvicorn app:app --app-dir bench/peer --workers 2 (see scripts/bench.sh
for the worker/thread choice).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fastapi import FastAPI, File, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from model import Model, prepare

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = frozenset(k for k in os.environ.get("PEER_API_KEYS", "").split(",") if k)
MODEL = Model(
    Path(os.environ.get("PEER_MODEL", ROOT / "models/efficientnet-lite2.onnx")),
    Path(os.environ.get("PEER_HEADS", ROOT / "models/heads.json")),
    threads=int(os.environ.get("PEER_ORT_THREADS", "1")),
    views=int(os.environ.get("PEER_VIEWS", "1")),
    second_scene_threshold=float(os.environ.get("PEER_SECOND_SCENE_THRESHOLD", "70")),
)

INVALID_IMAGE = "Please upload an image with one of the following formats: .jpg, .jpeg or .png"
INVALID_KEY = "The API key in the x-api-key header is not valid: it is unknown or has been revoked."

# One inference at a time per process: with a thread per core (PEER_ORT_THREADS)
# the model already fills its share of the machine, and concurrent runs would
# only multiply the activation memory.
inference_lock = threading.Lock()


def label_photo(data: bytes) -> dict | None:
    try:
        pixels = prepare(data)
    except Exception:  # anything Pillow cannot read is the client's bad upload
        return None
    with inference_lock:
        return MODEL.label(pixels)


app = FastAPI(title="photolabel peer (Python)")


@app.exception_handler(RequestValidationError)
async def missing_field(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"loc": ["body", "image"], "msg": "field required", "type": "value_error.missing"}]
    return JSONResponse({"detail": detail}, status_code=422)


@app.get("/health")
async def health() -> dict:
    return {"status": "ok", "engine": "onnxruntime"}


@app.post("/labelling/img", response_model=None)
async def labelling_img(
    request: Request,
    image: UploadFile | None = File(None),
    x_api_key: str | None = Header(None),
) -> dict | JSONResponse:
    if x_api_key is None:
        return JSONResponse({"message": "Missing Authentication Token"}, status_code=403)
    if x_api_key not in API_KEYS:
        return JSONResponse({"Output": INVALID_KEY}, status_code=401)
    if image is None:
        return await missing_field(request, RequestValidationError([]))
    data = await image.read()
    result = await run_in_threadpool(label_photo, data)
    if result is None:
        return JSONResponse({"detail": INVALID_IMAGE}, status_code=400)
    return result
