"""The model part of photolabel's Python peers, written as a Python team
would: Pillow (with JPEG `draft`), NumPy, onnxruntime, and photolabel's own
backbone and heads files. Shared by the FastAPI peer (app.py) and the plain
loop (python_loop.py), so both compute the same thing.

`Model(views=1)` is what a team would write: one backbone pass per photo.
`views=2` also runs the mirrored photo and averages, as photolabel did on
every photo before issue 16.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SIZE = 260
IMAGE_CLASSES = ("indoor", "outdoor", "other")
ROOM_CLASSES = ("living_room", "kitchen", "bathroom", "bedroom", "other_room")
SUBCLASSES = ("hall_corridor", "room", "scullery")
SCENE_CLASSES = ("facade", "view", "street", "balcony-garden", "building_part", "no_building")

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


def confidence(p: float) -> str:
    return str(round(min(max(p * 100, 0.0), 100.0), 2))


def prepare(data: bytes, size: int = SIZE) -> np.ndarray:
    """Bytes → [3, size, size]: the upright photo squashed to size×size
    (bicubic), normalised. Raises on anything Pillow cannot read. Other
    sizes than the backbone's 260 are for tools/decode_size_study.py."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format not in ("JPEG", "PNG", "WEBP"):
            raise ValueError(f"format {image.format}")
        # Decode JPEGs at 1/2, 1/4 or 1/8 size when that still leaves ≥ size px.
        image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent floor plans and logos: composite on white, as photolabel does.
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        return NORMALISE[np.asarray(image)].transpose(2, 0, 1)  # HWC → CHW


class Model:
    def __init__(self, backbone: Path, heads: Path, threads: int = 0, views: int = 1,
                 second_scene_threshold: float = 70.0):
        spec = json.loads(Path(heads).read_text())
        if spec["format"] != "photolabel-heads/2":
            raise ValueError(f"unknown heads format {spec['format']!r}")
        if spec["preprocessing"]["view"] != "squash":
            raise ValueError(f"preprocessing {spec['preprocessing']} is not implemented here")
        if views not in (1, 2):
            raise ValueError("views must be 1 or 2")
        self.views = views
        self.second_scene_threshold = second_scene_threshold
        self.image = Head(spec["image"], IMAGE_CLASSES)
        self.room = Head(spec["room"], ROOM_CLASSES)
        self.subclass = Head(spec["subclass"], SUBCLASSES)
        self.scene = Head(spec["scene"], SCENE_CLASSES)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning intra-op threads would steal the cores other requests decode on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(backbone), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def label(self, pixels: np.ndarray) -> dict:
        """[3, 260, 260] → the contract's `{"Output": …}`."""
        batch = pixels[None] if self.views == 1 else np.stack([pixels, pixels[:, :, ::-1]])
        (embedding,) = self.session.run(["embedding"], {self.input_name: batch})
        embedding = embedding.mean(axis=0)

        image = self.image.probabilities(embedding)
        top = int(np.argmax(image))  # ties go to the first class, like photolabel
        output = {"Image_Class": IMAGE_CLASSES[top], "ConfidencePercent_Image_Class": confidence(image[top])}
        if IMAGE_CLASSES[top] == "indoor":
            room = self.room.probabilities(embedding)
            best = int(np.argmax(room))
            output["Room_Class"] = ROOM_CLASSES[best]
            output["ConfidencePercent_Room_Class"] = confidence(room[best])
            if ROOM_CLASSES[best] == "other_room":
                subclass = self.subclass.probabilities(embedding)
                sub = int(np.argmax(subclass))
                output["Room_Subclass"] = SUBCLASSES[sub]
                output["ConfidencePercent_Room_Subclass"] = confidence(subclass[sub])
        elif IMAGE_CLASSES[top] == "outdoor":
            scene = self.scene.probabilities(embedding)
            first, second = np.argsort(-scene, kind="stable")[:2]
            output["Scene_Class1"] = SCENE_CLASSES[first]
            output["ConfidencePercent_Scene_Class1"] = confidence(scene[first])
            # The rule compares the confidence the client reads.
            if float(confidence(scene[first])) <= self.second_scene_threshold:
                output["Scene_Class2"] = SCENE_CLASSES[second]
                output["ConfidencePercent_Scene_Class2"] = confidence(scene[second])
        return {"Output": output}
