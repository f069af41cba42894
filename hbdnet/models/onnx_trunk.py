"""A detector's convolutional trunk (backbone, FPN and the RPN head's convs) run by ONNX Runtime.

On two CPU cores the trunk is about 80 % of a light-model window's time (``tools/bench_cpu.py
--profile``: backbone 47 %, FPN 17 %, RPN head convs 17 %), and ONNX Runtime runs the same float32
graph in 0.63-0.78 of PyTorch's time there (the model's inference form in both: BatchNorm folded).
Everything after the trunk (anchors, proposal selection and NMS, rotated RoIAlign, the RoI head, box
decoding, rotated NMS) stays in PyTorch, unchanged.

Runtimes: ``onnx`` exports the float32 trunk at load; ``int8`` runs the trunk stored quantized in the
model file (:func:`quantize_trunk`, ``hbdnet export --int8``): integer convolutions (VNNI here). Both
keep ONNX Runtime's arena of activation buffers, without which int8 is no faster than PyTorch, and
share one arena per process that grows by what is asked rather than by powers of two and hands its
buffers back at the end of each run; the PyTorch weights of an exported trunk are let go. An 8,192 px
mosaic of real images (``tools/bench_cpu.py --detect``, two idle cores, the default model's weights):
PyTorch 137 s and 793 MB peak RSS; int8 65 s and 1057 MB (68 s and 1360 MB with an arena per session
grown by powers of two, 138 s and 915 MB without an arena); float32 onnx 92 s and 1395 MB (84 s and
1547 MB with an arena per session). Those figures are from before the backbone's padding was folded
into its convolutions (:func:`fold_pads`); with it, the shipped model on a 16,384 px mosaic took
145.9 s and 1098 MB against 171.5 s and 1283 MB, and with the memory changes of the same day (the
arena handed back after each run, the trunk's PyTorch weights let go, ``hbdnet.heap``) 126-135 s
and 880-885 MB against 127-134 s and 1030-1036 MB (README, benchmarks). int8 moves the scores: see
``MODEL_CARD.md`` before using it.

The float32 graph is exported from the loaded weights when the detector is built (a second or two,
nothing written to disk), and the int8 one from the weights as the model file stores them, when it is
written, so neither can disagree with the weights beside it. Only the trunk of a detector whose features go
straight to its heads is exported: a model with inter-layer fusion changes its level-0 features
between the FPN and the heads, so its detectors keep PyTorch.
"""

from __future__ import annotations

import functools
import io
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hbdnet.models.backbones.efficientnet_lite import aligned_inputs

RUNTIMES = ("auto", "torch", "onnx", "int8")
ALIGN = 32  # the backbones' total stride: the detectors pad their batches to it


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Trunk(nn.Module):
    """``extract_features`` then ``rpn_head.head``, flattened to one tuple of tensors for export."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, batch: Tensor) -> tuple[Tensor, ...]:
        features = self.detector.extract_features(batch)
        logits, deltas = self.detector.rpn_head.head(features)
        return (*features, *logits, *deltas)


def export_trunk(detector: nn.Module) -> bytes:
    """The float32 ONNX graph of a detector's trunk, for any batch size and any window whose sides are
    multiples of 32, as the detector pads its batches: the backbone's padding is then a constant,
    folded into its convolutions (:func:`fold_pads`)."""
    probe = torch.zeros(1, 3, 64, 64)
    graph = io.BytesIO()
    with warnings.catch_warnings(), aligned_inputs(detector):  # the exporter announces its own deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(_Trunk(detector).eval(), (probe,), graph, dynamo=False, opset_version=17,
                          input_names=["batch"], dynamic_axes={"batch": {0: "b", 2: "h", 3: "w"}})
    return fold_pads(graph.getvalue())


def fold_pads(graph: bytes) -> bytes:
    """``graph`` with every constant zero ``Pad`` whose one reader is a ``Conv`` made part of that
    convolution's own padding, which ONNX allows to differ before and after (TensorFlow's ``SAME``
    padding at stride 2: one pixel more after).

    The exporter writes such padding as a ``Pad`` whose amounts a chain of constant nodes computes,
    which neither it nor ONNX Runtime folds; left so, each padded activation is copied in float32 (in
    an int8 graph: dequantized, padded, quantized again), and those copies were the largest buffers of
    a run: about 320 MB of arena for one 1024 px window of the shipped int8 trunk, 165 MB without them,
    the outputs unchanged to the bit."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load_from_string(graph)
    producer = {name: node for node in model.graph.node for name in node.output}
    initializers = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def constant(name: str, nodes: dict[str, onnx.NodeProto], inits: set[str]) -> bool:
        """Whether ``name`` is computed from constants alone (collecting the nodes and initializers)."""
        if not name or name in inits or name in nodes:
            return True
        if name in initializers:
            inits.add(name)
            return True
        node = producer.get(name)
        if node is None:  # a graph input
            return False
        nodes[name] = node
        return all(constant(i, nodes, inits) for i in node.input)

    folded = []
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        conv = readers.get(pad.output[0], [])
        nodes: dict[str, onnx.NodeProto] = {}
        inits: set[str] = set()
        if (len(conv) != 1 or conv[0].op_type != "Conv" or any(a.name == "mode" and a.s != b"constant" for a in pad.attribute)
                or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv[0].attribute)
                or any(a.name == "pads" and any(a.ints) for a in conv[0].attribute)
                or not all(constant(i, nodes, inits) for i in pad.input[1:])):
            continue
        order = [n for n in model.graph.node if any(o in nodes for o in n.output)]
        outputs = [name for name in pad.input[1:] if name]
        sub = helper.make_model(helper.make_graph(order, "pad", [], [helper.make_empty_tensor_value_info(o) for o in outputs],
                                                  [initializers[i] for i in inits]), opset_imports=model.opset_import)
        amounts, *value = ReferenceEvaluator(sub).run(None, {})
        amounts = [int(v) for v in amounts]
        rank = len(amounts) // 2
        if any(amounts[:2] + amounts[rank:rank + 2]) or any(np.any(v) for v in value):
            continue  # padding of the batch or channels, or not with zeros
        for attr in [a for a in conv[0].attribute if a.name == "pads"]:  # all zeros (checked above)
            conv[0].attribute.remove(attr)
        conv[0].attribute.append(helper.make_attribute("pads", amounts[2:rank] + amounts[rank + 2:]))
        conv[0].input[0] = pad.input[0]
        folded.append(pad)
    if not folded:
        return graph
    for pad in folded:
        model.graph.node.remove(pad)
    _drop_unread_nodes(model.graph)
    return model.SerializeToString()


def _drop_unread_nodes(graph) -> None:
    """Remove the nodes none of whose outputs lead to the graph's outputs (what computed the pads)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def quantize_trunk(graph: bytes, batches: Iterable[np.ndarray]) -> bytes:
    """``graph`` (from :func:`export_trunk`) with int8 weights (per output channel) and uint8
    activations, their ranges calibrated on ``batches`` (normalised windows, ``(1, 3, H, W)``
    float32, as the detector's transform makes them): ONNX Runtime's static quantization, QDQ format,
    which its CPU provider runs as integer convolutions (VNNI where the CPU has it)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"batch": np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="hbdnet-int8-") as tmp:
        raw, pre, out = (Path(tmp) / name for name in ("trunk.onnx", "pre.onnx", "int8.onnx"))
        raw.write_bytes(graph)
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return out.read_bytes()


@functools.cache
def _shared_arena() -> None:
    """One CPU arena for every session of this process, growing by what is asked (not by powers of two):
    the local and global trunks run one after the other, so they can share their buffers."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))  # 1: kSameAsRequested


class OnnxTrunk:
    """Callable ``batch (B, 3, H, W) float32 -> (features, (logits, deltas))``, as the detector's own
    ``extract_features`` and ``rpn_head.head`` would give them, computed by ``graph`` (from
    :func:`export_trunk` or :func:`quantize_trunk`) in ONNX Runtime."""

    def __init__(self, graph: bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: on a small machine the spinning starves the threads
        # that read the next windows and run the rest of the detector.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_mem_pattern = False  # a pattern per window shape: more memory, no faster here
        _shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        self.levels = len(self.session.get_outputs()) // 3  # features, logits, deltas per level
        # The arena hands its buffers back at the end of each run: between runs the rest of the
        # detector and the scene reader use that memory, and the peak of a run is the arena plus
        # what is held then, not the arena kept plus what the rest holds at its own peak.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def __call__(self, batch: Tensor) -> tuple[list[Tensor], tuple[list[Tensor], list[Tensor]]]:
        if batch.shape[-2] % ALIGN or batch.shape[-1] % ALIGN:
            raise ValueError(f"an exported trunk takes windows padded to multiples of {ALIGN} px, "
                             f"got {tuple(batch.shape[-2:])}")
        x = np.ascontiguousarray(batch.detach().to(torch.float32).cpu().numpy())
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self._input: x}, self._run_options)]
        n = self.levels
        features = [f.contiguous(memory_format=torch.channels_last) for f in outputs[:n]]
        return features, (outputs[n:2 * n], outputs[2 * n:])


def trunk_detectors(model: nn.Module) -> dict[str, nn.Module]:
    """The detectors whose trunks can be exported, by name (``local``, ``global.0``, ...); none when
    the model fuses features across levels (its level-0 features change between FPN and heads)."""
    if getattr(model, "fusion", None) is not None:
        return {}
    return {"local": model.local_detector,
            **{f"global.{i}": d for i, d in enumerate(model.global_detectors)}}


def use_onnx_trunks(model: nn.Module, graphs: dict[str, bytes] | None = None) -> int:
    """Give every detector of an HBD-Net ``model`` (on the CPU, in its inference form) an ONNX Runtime
    trunk: ``graphs[name]`` (the int8 trunks stored in a model file, for some or all of its
    detectors), else its float32 export. None when the model fuses features across levels. Returns how
    many were given one."""
    detectors = trunk_detectors(model)
    if graphs is not None and not set(graphs) <= set(detectors):
        raise ValueError(f"trunk graphs for {sorted(graphs)}, but the model's detectors are {sorted(detectors)}")
    for name, detector in detectors.items():
        given = (graphs or {}).get(name)
        detector.trunk = OnnxTrunk(given if given is not None else export_trunk(detector))
        # The trunk's PyTorch weights are not read again (30 MB for the light model's two detectors).
        # On the meta device they hold no memory and the modules and their names stay; PyTorch would
        # still convolve a CPU tensor with meta weights (into uninitialised memory), so a call fails.
        for module in _trunk_modules(detector):
            module.to("meta")
            module.register_forward_pre_hook(_runs_in_onnxruntime)
    return len(detectors)


def _runs_in_onnxruntime(module: nn.Module, args: tuple) -> None:
    raise RuntimeError(f"this {type(module).__name__} runs in ONNX Runtime (the detector's trunk); "
                       "its PyTorch weights were let go (load the model with runtime torch)")


def _trunk_modules(detector: nn.Module) -> tuple[nn.Module, ...]:
    """The modules whose work an exported trunk does (``_Trunk``): backbone, FPN, the RPN head's convs."""
    rpn = detector.rpn_head
    return detector.backbone, detector.neck, rpn.rpn_conv, rpn.rpn_cls, rpn.rpn_reg
