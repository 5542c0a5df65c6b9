"""The Python peer of photolabel's HTTP benchmark.

The same `/labelling/img` contract (../shared/docs/api-contract.md), the same
ONNX backbone and the same heads file as photolabel, written the way one
would write it in Python: FastAPI + uvicorn, Pillow, NumPy, onnxruntime.
It exists to be measured against (scripts/bench.sh), so it implements the
upload endpoint with its key check and its 400/401/403/422 bodies; keys are
kept in memory, and body-size limits are left to the proxy in front.

Configuration (environment):
  PEER_MODEL        backbone ONNX file (default models/efficientnet-lite2.onnx)
  PEER_HEADS        heads file, format photolabel-heads/1 (default models/heads.json)
  PEER_API_KEYS     comma-separated accepted keys
  PEER_ORT_THREADS  ONNX Runtime intra-op threads per worker process (default 1)
  PEER_SECOND_SCENE_THRESHOLD   the 70 % rule, in percent (default 70)

Run: uvicorn app:app --app-dir bench/peer --workers 2 (see scripts/bench.sh
for the worker/thread choice).
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("PEER_MODEL", ROOT / "models/efficientnet-lite2.onnx"))
HEADS = Path(os.environ.get("PEER_HEADS", ROOT / "models/heads.json"))
API_KEYS = frozenset(k for k in os.environ.get("PEER_API_KEYS", "").split(",") if k)
ORT_THREADS = int(os.environ.get("PEER_ORT_THREADS", "1"))
SECOND_SCENE_THRESHOLD = float(os.environ.get("PEER_SECOND_SCENE_THRESHOLD", "70"))

SIZE = 260
IMAGE_CLASSES = ("indoor", "outdoor", "other")
ROOM_CLASSES = ("living_room", "kitchen", "bathroom", "bedroom", "other_room")
SCENE_CLASSES = ("facade", "view", "street", "balcony-garden", "building_part", "no_building")

INVALID_IMAGE = "Please upload an image with one of the following formats: .jpg, .jpeg or .png"
INVALID_KEY = "The API key in the x-api-key header is not valid: it is unknown or has been revoked."

# (x/255 − 0.498)/0.502 for every byte value, in float32 like the training code.
NORMALISE = ((np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.498))
             / np.float32(0.502)).astype(np.float32)


class Head:
    """softmax((W·x + b) / T) for one stage."""

    def __init__(self, spec: dict, classes: tuple[str, ...]):
        if tuple(spec["classes"]) != classes:
            raise ValueError(f"head classes {spec['classes']} are not {classes}")
        self.weights = np.asarray(spec["weights"], dtype=np.float32)
        self.bias = np.asarray(spec["bias"], dtype=np.float32)
        self.temperature = float(spec["temperature"])

    def probabilities(self, embedding: np.ndarray) -> np.ndarray:
        logits = (self.weights @ embedding + self.bias).astype(np.float64)
        exps = np.exp((logits - logits.max()) / self.temperature)
        return exps / exps.sum()


heads_spec = json.loads(HEADS.read_text())
if heads_spec["format"] != "photolabel-heads/1":
    raise ValueError(f"unknown heads format {heads_spec['format']!r}")
if heads_spec["preprocessing"] != {"view": "squash", "flip": True}:
    raise ValueError(f"preprocessing {heads_spec['preprocessing']} is not implemented here")
if heads_spec["subclass"]["kind"] != "constant":
    raise ValueError(f"subclass rule {heads_spec['subclass']} is not implemented here")
IMAGE_HEAD = Head(heads_spec["image"], IMAGE_CLASSES)
ROOM_HEAD = Head(heads_spec["room"], ROOM_CLASSES)
SCENE_HEAD = Head(heads_spec["scene"], SCENE_CLASSES)
ROOM_SUBCLASS = heads_spec["subclass"]["class"]

options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.intra_op_num_threads = ORT_THREADS
options.inter_op_num_threads = 1
# Spinning intra-op threads would steal the cores the other requests decode on.
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
INPUT_NAME = session.get_inputs()[0].name
# One inference at a time per process: with a thread per core (PEER_ORT_THREADS)
# the model already fills its share of the machine, and concurrent runs would
# only multiply the activation memory.
inference_lock = threading.Lock()


def confidence(p: float) -> str:
    return str(round(min(max(p * 100, 0.0), 100.0), 2))


def prepare(data: bytes) -> np.ndarray:
    """Bytes → [2, 3, 260, 260]: the upright photo squashed to 260×260
    (bicubic) and its mirror image, normalised."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format not in ("JPEG", "PNG", "WEBP"):
            raise ValueError(f"format {image.format}")
        # Decode JPEGs at 1/2, 1/4 or 1/8 size when that still leaves ≥ 260 px.
        image.draft("RGB", (SIZE, SIZE))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent floor plans and logos: composite on white, as photolabel does.
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        pixels = NORMALISE[np.asarray(image)].transpose(2, 0, 1)  # HWC → CHW
    return np.stack([pixels, pixels[:, :, ::-1]])


def label(views: np.ndarray) -> dict:
    with inference_lock:
        (embedding,) = session.run(["embedding"], {INPUT_NAME: views})
    embedding = embedding.mean(axis=0)

    image = IMAGE_HEAD.probabilities(embedding)
    top = int(np.argmax(image))  # ties go to the first class, like photolabel
    output = {"Image_Class": IMAGE_CLASSES[top], "ConfidencePercent_Image_Class": confidence(image[top])}
    if IMAGE_CLASSES[top] == "indoor":
        room = ROOM_HEAD.probabilities(embedding)
        best = int(np.argmax(room))
        output["Room_Class"] = ROOM_CLASSES[best]
        output["ConfidencePercent_Room_Class"] = confidence(room[best])
        if ROOM_CLASSES[best] == "other_room":
            output["Room_Subclass"] = ROOM_SUBCLASS
            output["ConfidencePercent_Room_Subclass"] = confidence(1.0)
    elif IMAGE_CLASSES[top] == "outdoor":
        scene = SCENE_HEAD.probabilities(embedding)
        first, second = np.argsort(-scene, kind="stable")[:2]
        output["Scene_Class1"] = SCENE_CLASSES[first]
        output["ConfidencePercent_Scene_Class1"] = confidence(scene[first])
        # The rule compares the confidence the client reads.
        if float(confidence(scene[first])) <= SECOND_SCENE_THRESHOLD:
            output["Scene_Class2"] = SCENE_CLASSES[second]
            output["ConfidencePercent_Scene_Class2"] = confidence(scene[second])
    return {"Output": output}


def label_photo(data: bytes) -> dict | None:
    try:
        views = prepare(data)
    except Exception:  # anything Pillow cannot read is the client's bad upload
        return None
    return label(views)


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
