"""A detector's convolutional trunk (backbone, FPN and the RPN head's convs) run by ONNX Runtime.

On two CPU cores the trunk is about 80 % of a light-model window's time (``tools/bench_cpu.py
--profile``: backbone 47 %, FPN 17 %, RPN head convs 17 %), and ONNX Runtime runs the same float32
graph in 0.63-0.78 of PyTorch's time there (the model's inference form in both: BatchNorm folded).
Everything after the trunk (anchors, proposal selection and NMS, rotated RoIAlign, the RoI head, box
decoding, rotated NMS) stays in PyTorch, unchanged.

Memory: ONNX Runtime keeps its arena of activation buffers, so a run's peak is higher (an 8,192 px
mosaic of real images, ``tools/bench_cpu.py``, two idle cores: PyTorch 129 s and 793 MB; ONNX Runtime
with its arena and without memory patterns, as set here, 84 s and 1547 MB; arena and patterns 91 s and
1834 MB; patterns only 107 s and 964 MB; neither 146 s and 944 MB). That is why ``torch`` stays the
default runtime and ``onnx`` is asked for.

The graph is exported from the loaded weights when the detector is built (a second or two, nothing
written to disk), so it can never disagree with them. Only the trunk of a detector whose features go
straight to its heads is exported: a model with inter-layer fusion changes its level-0 features
between the FPN and the heads, so its detectors keep PyTorch.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import Tensor, nn

RUNTIMES = ("torch", "onnx")


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


class OnnxTrunk:
    """Callable ``batch (B, 3, H, W) float32 -> (features, (logits, deltas))``, as the detector's own
    ``extract_features`` and ``rpn_head.head`` would give them."""

    def __init__(self, detector: nn.Module, threads: int | None = None):
        import onnxruntime as ort

        probe = torch.zeros(1, 3, 64, 64)
        with torch.inference_mode():
            self.levels = len(detector.extract_features(probe))
        graph = io.BytesIO()
        with warnings.catch_warnings():  # the TorchScript exporter announces its own deprecation
            warnings.simplefilter("ignore")
            torch.onnx.export(_Trunk(detector).eval(), (probe,), graph, dynamo=False, opset_version=17,
                              input_names=["batch"], dynamic_axes={"batch": {0: "b", 2: "h", 3: "w"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: on a small machine the spinning starves the threads
        # that read the next windows and run the rest of the detector.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_mem_pattern = False  # a pattern per window shape: more memory, no faster here
        self.session = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, batch: Tensor) -> tuple[list[Tensor], tuple[list[Tensor], list[Tensor]]]:
        x = np.ascontiguousarray(batch.detach().to(torch.float32).cpu().numpy())
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self._input: x})]
        n = self.levels
        features = [f.contiguous(memory_format=torch.channels_last) for f in outputs[:n]]
        return features, (outputs[n:2 * n], outputs[2 * n:])


def use_onnx_trunks(model: nn.Module) -> int:
    """Give every detector of an HBD-Net ``model`` (on the CPU, in its inference form) an ONNX Runtime
    trunk; none when the model fuses features across levels. Returns how many were given one."""
    if getattr(model, "fusion", None) is not None:
        return 0
    detectors = [model.local_detector, *model.global_detectors]
    for detector in detectors:
        detector.trunk = OnnxTrunk(detector)
    return len(detectors)
