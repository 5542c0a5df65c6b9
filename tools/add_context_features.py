#!/usr/bin/env python3
"""Widen a backbone's `embedding` output with mid-level context (issue 11).

The heads used to read only the last layer's 1280 pooled features. This
appends, from the same single backbone pass, the spatial means of two
earlier block inputs: block 14's (end of the 17x17 stage, 120 channels) and
block 20's (end of the 9x9 stage, 208 channels). Texture and layout cues
from those layers lowered the hold-out NLL of every head (MODEL_CARD.md,
"Mid-level context") at the cost of two ReduceMean nodes.

The output keeps its name and stays the first output, so both engines read
it as before; its layout is

    embedding[:, 0:1280]     the last layer, pooled (what `logits` is computed from,
                             and what the listing's duplicate search compares)
    embedding[:, 1280:1400]  block 14's input, pooled
    embedding[:, 1400:1608]  block 20's input, pooled

Works on the fp32 export and on its QDQ int8 quantisation alike (in the
latter the block inputs are DequantizeLinear outputs, so the context is
computed in float from the int8 activations). Refuses a graph that already
has the context, or whose layout it does not recognise.

    python3 tools/add_context_features.py IN.onnx OUT.onnx

Needs only `onnx` (1.23.2, as the other tools in models/README.md).
"""

import sys

import onnx
from onnx import TensorProto, helper

BLOCKS = (14, 20)
POOLED = 1280
CONTEXT_WIDTHS = {14: 120, 20: 208}


def block_input(graph, block):
    for node in graph.node:
        if node.op_type == "Conv" and node.name.startswith(f"/_blocks.{block}/_expand_conv/"):
            return node.input[0]
    raise SystemExit(f"no expand convolution of block {block}: not an EfficientNet-Lite2 export")


def widen(model):
    graph = model.graph
    names = [o.name for o in graph.output]
    if names != ["embedding", "logits"]:
        raise SystemExit(f"outputs {names}, expected ['embedding', 'logits']")
    if any(n.name.startswith("/context/") for n in graph.node):
        raise SystemExit("this backbone already has the context features")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    # The pooled last layer keeps feeding `logits` under a new name.
    for node in graph.node:
        node.output[:] = ["pooled" if o == "embedding" else o for o in node.output]
        node.input[:] = ["pooled" if i == "embedding" else i for i in node.input]
    parts = ["pooled"]
    for block in BLOCKS:
        source = block_input(graph, block)
        out = f"context_block{block}"
        if opset >= 18:
            axes = f"/context/axes{block}"
            graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [2], [2, 3]))
            graph.node.append(helper.make_node("ReduceMean", [source, axes], [out],
                                               name=f"/context/mean{block}", keepdims=0))
        else:
            graph.node.append(helper.make_node("ReduceMean", [source], [out],
                                               name=f"/context/mean{block}", axes=[2, 3], keepdims=0))
        parts.append(out)
    graph.node.append(helper.make_node("Concat", parts, ["embedding"], name="/context/concat", axis=1))
    width = POOLED + sum(CONTEXT_WIDTHS.values())
    graph.output[0].CopyFrom(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width]))
    onnx.checker.check_model(model)
    return model


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model = widen(onnx.load(sys.argv[1]))
    onnx.save(model, sys.argv[2])
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
