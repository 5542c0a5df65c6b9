"""Shared helpers of pack_data.py and finetune.py.

The starting weights do not travel as a .pth: the repository already carries
them inside models/efficientnet-lite2.onnx, where the exporter folded every
BatchNorm into the convolution before it (W' = W*s, b' = beta - mean*s with
s = gamma/sqrt(var+eps)). pack_data.py stores the BatchNorm tensors (small)
and finetune.py divides them back out, giving the original fp32 state dict
(max relative error ~1e-7; checked against the .pth by pack_data.py and
against onnxruntime by finetune.py).
"""
import hashlib
import sys
from pathlib import Path

import numpy as np

SIZE = 260
IMAGE_CLASSES = ["indoor", "outdoor", "other"]
ROOM_CLASSES = ["living_room", "kitchen", "bathroom", "bedroom", "other_room"]
SCENE_CLASSES = ["facade", "view", "street", "balcony-garden", "building_part", "no_building"]
MEAN, STD = 0.498, 0.502  # (x/255 - MEAN)/STD, as the Rust preprocessing
BASE_ONNX = "models/efficientnet-lite2.onnx"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_pylib(data_dir):
    """Make efficientnet_lite_pytorch importable (carried as a plain folder)."""
    lib = Path(data_dir) / "pylib"
    if lib.is_dir() and str(lib) not in sys.path:
        sys.path.insert(0, str(lib))


def conv_bn_pairs(net):
    """(conv name, bn name) of the model in forward order (= ONNX Conv order)."""
    pairs = [("_conv_stem", "_bn0")]
    for i, block in enumerate(net._blocks):
        p = f"_blocks.{i}."
        if block._block_args.expand_ratio != 1:
            pairs.append((p + "_expand_conv", p + "_bn0"))
        pairs.append((p + "_depthwise_conv", p + "_bn1"))
        pairs.append((p + "_project_conv", p + "_bn2"))
    pairs.append(("_conv_head", "_bn1"))
    return pairs


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
    pairs = conv_bn_pairs(net)
    if len(convs) != len(pairs):
        raise RuntimeError(f"ONNX has {len(convs)} Conv nodes, model has {len(pairs)} conv+bn pairs")
    eps = bn_eps(net)
    ref = net.state_dict()
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


def bn_tensors(state_dict, net):
    """The BN tensors of a state dict (what pack_data.py carries)."""
    out = {}
    for _conv, bnname in conv_bn_pairs(net):
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            t = state_dict[f"{bnname}.{k}"]
            out[f"{bnname}.{k}"] = t.detach().cpu().numpy()
    return out
