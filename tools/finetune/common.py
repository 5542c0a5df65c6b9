"""Shared helpers of pack_data.py and finetune.py.

The starting weights do not travel as a .pth: the repository already carries
them inside models/efficientnet-lite2.onnx, where the exporter folded every
BatchNorm into the convolution before it (W' = W*s, b' = beta - mean*s with
s = gamma/sqrt(var+eps)). pack_data.py stores the BatchNorm tensors (small)
and finetune.py divides them back out, giving the original fp32 state dict
(max relative error ~1e-7; checked against the .pth by pack_data.py and
against onnxruntime by finetune.py).
"""
import collections
import hashlib
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

SIZE = 260
IMAGE_CLASSES = ["indoor", "outdoor", "other"]
ROOM_CLASSES = ["living_room", "kitchen", "bathroom", "bedroom", "other_room"]
SCENE_CLASSES = ["facade", "view", "street", "balcony-garden", "building_part", "no_building"]
SUBCLASSES = ["hall_corridor", "room", "scullery"]  # of other_room
# The real listing photos of issue 11: trained on more often than the research photos.
LISTING_SOURCES = ("es_gray", "vn_listings_dev", "zind_empty_home")
MEAN, STD = 0.498, 0.502  # (x/255 - MEAN)/STD, as the Rust preprocessing
# The ImageNet start (sha256 80e15a54...). Since 2026-11-28 the repository
# ships the fine-tuned interpolation under this name, so a new run first puts
# the ImageNet export back here (README: "Running it again"); pack_data.py's
# check against the .pth and finetune.py's check against onnxruntime refuse
# any other file.
BASE_ONNX = "models/efficientnet-lite2.onnx"
IMAGENET_ONNX_SHA256 = "80e15a54677edfa196467d6c7d59706c6eb900cde4b1ffef6154f3674b58f366"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def in_holdout(path, percent=15):
    """Whether a photo (path or file name) is in `photolabel train`'s calibration
    hold-out: the first 32 bits of sha256(file name) mod 100 < 15, the rule of
    crates/vision/src/train.rs. Fine-tuning never sees these photos, so the
    temperatures and L2 strengths fitted on them stay honest."""
    name = path.rsplit("/", 1)[-1]
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100 < percent


def add_pylib(data_dir):
    """Make efficientnet_lite_pytorch importable (carried as a plain folder)."""
    lib = Path(data_dir) / "pylib"
    if lib.is_dir() and str(lib) not in sys.path:
        sys.path.insert(0, str(lib))


def bn_eps(net):
    return float(net._global_params.batch_norm_epsilon)


def onnx_convs(onnx_path):
    """Folded (weight, bias) of every Conv node in graph order, plus _fc."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    inits = {i.name: i for i in m.graph.initializer}
    convs = []
    for node in m.graph.node:
        if node.op_type == "Conv":
            w = numpy_helper.to_array(inits[node.input[1]])
            b = numpy_helper.to_array(inits[node.input[2]])
            convs.append((w.astype(np.float32), b.astype(np.float32)))
    fc_w = numpy_helper.to_array(inits["net._fc.weight"]).astype(np.float32)
    fc_b = numpy_helper.to_array(inits["net._fc.bias"]).astype(np.float32)
    return convs, fc_w, fc_b


def bn_scale(g, v, eps):
    g = np.asarray(g, np.float32)
    v = np.asarray(v, np.float32)
    return g / np.sqrt(v + np.float32(eps))


def state_dict_from_onnx(net, onnx_path, bn):
    """Rebuild the fp32 state dict of `net` from the folded ONNX and the BN tensors.

    bn: mapping 'name.weight|bias|running_mean|running_var|num_batches_tracked' -> array.
    """
    import torch

    convs, fc_w, fc_b = onnx_convs(onnx_path)
    ref = net.state_dict()
    pairs = conv_bn_pairs(ref)
    if len(convs) != len(pairs):
        raise RuntimeError(f"ONNX has {len(convs)} Conv nodes, model has {len(pairs)} conv+bn pairs")
    eps = bn_eps(net)
    sd = {}
    for (conv, bnname), (wf, _bf) in zip(pairs, convs):
        want = tuple(ref[conv + ".weight"].shape)
        if wf.shape != want:
            raise RuntimeError(f"{conv}: ONNX weight {wf.shape} != model {want}")
        s = bn_scale(bn[bnname + ".weight"], bn[bnname + ".running_var"], eps)
        sd[conv + ".weight"] = torch.from_numpy((wf / s[:, None, None, None]).astype(np.float32))
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{bnname}.{k}"] = torch.from_numpy(np.asarray(bn[f"{bnname}.{k}"], np.float32).copy())
        sd[f"{bnname}.num_batches_tracked"] = torch.tensor(int(np.asarray(bn[f"{bnname}.num_batches_tracked"])))
    sd["_fc.weight"] = torch.from_numpy(fc_w.copy())
    sd["_fc.bias"] = torch.from_numpy(fc_b.copy())
    missing = set(ref) - set(sd)
    extra = set(sd) - set(ref)
    if missing or extra:
        raise RuntimeError(f"state dict mismatch: missing {sorted(missing)[:5]} extra {sorted(extra)[:5]}")
    return sd


def bn_tensors(state_dict):
    """The BN tensors of a state dict (what pack_data.py carries): every module
    that has a running mean is a BatchNorm."""
    names = [k[: -len(".running_mean")] for k in state_dict if k.endswith(".running_mean")]
    return {f"{n}.{k}": np.asarray(state_dict[f"{n}.{k}"])
            for n in names for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def conv_bn_pairs(state_dict):
    """(conv name, bn name) in forward order (= the ONNX's Conv order), from a
    state dict (numpy or torch) rather than the model, so that packing needs
    no torch: modules register, and so list, each conv weight just before the
    BatchNorm that normalises it. pack_data.py checks the pairs against the
    ONNX's convolutions (shapes and folded values)."""
    pairs, conv = [], None
    for k in state_dict:
        if k.endswith(".weight") and state_dict[k].ndim == 4:
            conv = k[: -len(".weight")]
        elif k.endswith(".running_mean") and conv is not None:
            pairs.append((conv, k[: -len(".running_mean")]))
            conv = None
    return pairs


_PTH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
               "LongStorage": np.int64, "IntStorage": np.int32}


class _StorageType:
    def __init__(self, name):
        self.name = name


class _LegacyPthUnpickler(pickle.Unpickler):
    """Only what a legacy torch.save state dict holds; anything else is refused."""

    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name in _PTH_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not expected in a state dict")

    def persistent_load(self, pid):
        _kind, storage_type, key = pid[:3]
        self.storages[key] = storage_type.name
        return key


def load_pth(path):
    """Read a legacy-format (pre-zip) torch.save state dict into numpy arrays,
    so that packing needs no torch install (~3 GB): magic, protocol and
    system-info pickles, the state dict pickle, the storage keys, then each
    storage as an int64 element count and its raw little-endian data."""
    with open(path, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        storages = {}
        tensors = _LegacyPthUnpickler(f, storages).load()
        data = {}
        for key in pickle.load(f):
            (n,) = struct.unpack("<q", f.read(8))
            dtype = np.dtype(_PTH_DTYPES[storages[key]])
            data[key] = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype)
    out = collections.OrderedDict()
    for name, (key, offset, size, stride) in tensors.items():
        a = data[key]
        out[name] = np.lib.stride_tricks.as_strided(
            a[offset:], shape=size, strides=[s * a.itemsize for s in stride]).copy()
    return out


def conv_initializers(model):
    """Names of (weight, bias) of each Conv node of an ONNX model, in graph order."""
    return [(n.input[1], n.input[2]) for n in model.graph.node if n.op_type == "Conv"]


def tuned_convs(base, path):
    """A fine-tune's folded convolutions [(weight, bias)] in float32, in the base
    model's Conv order, from its ONNX export or from its conv_delta() file
    (.npz). An export must keep the base's shapes and its ImageNet classifier
    (`logits`) unchanged."""
    from onnx import numpy_helper

    b_inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in base.graph.initializer}
    names = conv_initializers(base)
    if str(path).endswith(".npz"):
        with np.load(path) as d:
            if set(d.files) != {n for pair in names for n in pair}:
                raise ValueError(f"{path}: not a delta of this base's convolutions")
            convs = [tuple(d[n].astype(np.float32) for n in pair) for pair in names]
    else:
        convs, fc_w, fc_b = onnx_convs(path)
        if not (np.array_equal(fc_w, b_inits["net._fc.weight"]) and np.array_equal(fc_b, b_inits["net._fc.bias"])):
            raise ValueError(f"{path}: the ImageNet classifier (_fc) differs from the base")
    if len(convs) != len(names):
        raise ValueError(f"{path}: {len(convs)} Conv nodes, the base has {len(names)}")
    for pair, arrays in zip(names, convs):
        for name, value in zip(pair, arrays):
            if value.shape != b_inits[name].shape:
                raise ValueError(f"{path}: shape {value.shape} where the base's {name} is {b_inits[name].shape}")
    if str(path).endswith(".npz"):  # a change: add it to the base
        return [tuple(b_inits[n] + v for n, v in zip(pair, arrays)) for pair, arrays in zip(names, convs)]
    return convs


def conv_delta(base, tuned_onnx):
    """What a fine-tune changed, as it travels back from the device: every folded
    convolution's weight and bias minus the base's (an onnx ModelProto), keyed
    by the base's initializer names. Weights in float16 (an error of 5e-4 of the
    change, not of the weight) and zipped by the caller (the frozen layers are
    all zeros), so three runs fit in what comes back from a device call; biases
    in float32."""
    from onnx import numpy_helper

    b_inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in base.graph.initializer}
    delta = {}
    for (wn, bn), (w, b) in zip(conv_initializers(base), tuned_convs(base, tuned_onnx)):
        delta[wn] = (w - b_inits[wn]).astype(np.float16)
        delta[bn] = b - b_inits[bn]
    return delta


def with_convs(base, convs):
    """`base` (an onnx ModelProto, changed in place and returned) with its
    folded convolutions replaced by convs [(weight, bias)] in Conv order."""
    from onnx import numpy_helper

    names = conv_initializers(base)
    if len(names) != len(convs):
        raise ValueError(f"{len(convs)} convolutions for a graph of {len(names)}")
    inits = {i.name: i for i in base.graph.initializer}
    for pair, arrays in zip(names, convs):
        for name, value in zip(pair, arrays):
            if tuple(inits[name].dims) != value.shape:
                raise ValueError(f"{name}: shape {value.shape}, the graph's {tuple(inits[name].dims)}")
            inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return base
