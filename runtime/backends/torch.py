"""torch backend: a MicroNet ONNX export run by torch, for GPU machines that have torch
and no TensorRT (and on the CPU, where it must agree with ONNX Runtime).

    Detector("model.onnx", backend="torch", device="cuda:0")    # or device="cpu"

It runs the same ``.onnx`` file as every other backend (node by node,
:class:`~micronet.runtime.backends.onnx_torch.TorchGraph`), so the metadata, the
reference results of ``micronet check`` and the preprocessing inside the graph are the
export's; the runtime needs neither the trainer nor a checkpoint.

On a GPU: fp16 weights and activations (an fp32 export's weights are cast once, at
load; nothing runs in fp32, so TF32 never enters), channels-last for cuDNN's tensor-core
kernels, one CUDA stream per backend. A host batch is copied once into pinned memory
and uploaded asynchronously (a CuPy or torch batch already on the GPU is read in
place). The proximity map — with the class logits of a class head, ``(N, 1 + K, H, W)``
as ONNX Runtime returns them — stays on the GPU and reaches CuPy through DLPack, without
a copy: ``find_peaks_cuda`` and the class gather read it there, and only coordinates come
back. :meth:`TorchBackend.infer_async` returns a job, so the Detector queues batch k + 1
while it finds the peaks of batch k.

On the CPU: fp32, maps as NumPy, for parity with ONNX Runtime (tested).

torch and onnx are imported when a backend is created, never by ``import micronet``;
without them an ``ImportError`` names ``pip install 'micronet-sdk[torch]'``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, InputTypeError, MissingFileError, MissingPackageError
from ..model_info import CLASS_OUTPUT_NAME, INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelInfo
from . import BACKEND_DEVICES, check_device
from ..optional import import_cupy
from .onnx_torch import TorchGraph

__all__ = ["TORCH_EXTRA", "TorchBackend", "TorchJob"]

log = logging.getLogger(__name__)

TORCH_EXTRA = "pip install 'micronet-sdk[torch]'"
DEVICES = BACKEND_DEVICES


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise MissingPackageError(f"the torch backend needs {name}: {TORCH_EXTRA} (a CUDA build of torch for GPUs)") from exc


class TorchJob:
    """A batch submitted by :meth:`TorchBackend.infer_async`; :meth:`wait` gives the maps."""

    def __init__(self, backend: TorchBackend, out: Any, event: Any) -> None:
        self._backend, self._out, self._event = backend, out, event
        self._result: Any = None

    @property
    def done(self) -> bool:
        """Whether the GPU has finished the batch (never blocks)."""
        return self._event is None or bool(self._event.query())

    def wait(self) -> Any:
        """Blocks until the batch is done; its ``(N, 1 [+ K], H, W)`` float32 maps: CuPy
        on the backend's GPU (complete, readable on any stream), NumPy on the CPU.
        Idempotent."""
        if self._result is None:
            if self._event is not None:
                self._event.synchronize()
            self._result = self._backend._hand_over(self._out)
            self._out = None
        return self._result


class TorchBackend:
    """Runs a MicroNet ONNX export with torch; implements ``Backend``.

    Args:
        path: an ``.onnx`` export (fp32 or fp16; int8 QDQ exports are for ONNX Runtime
            on the CPU and are refused).
        device: ``"auto"`` (GPU ``device_id`` when torch sees CUDA, else the CPU),
            ``"cpu"`` or ``"cuda"``.
        device_id: the GPU (``Detector(device="cuda:N")`` passes N).
        cudnn_benchmark: let cuDNN time its kernels for each new input shape (the
            Detector's tiles share a few shapes); sets torch's process-wide flag.

    Attributes:
        name: ``"torch-cuda"`` or ``"torch-cpu"``.
        device: ``"cuda"`` (maps are CuPy arrays on the GPU) or ``"cpu"`` (NumPy).
        device_id: the GPU index (0 on the CPU).
        info: the model's ``ModelInfo``; ``precision`` is what runs: ``"fp16"`` on a
            GPU, ``"fp32"`` on the CPU (so ``micronet check`` applies that tolerance).
        metadata: the export's ``metadata_props`` (with its reference results).
        outputs: ``("proximity",)`` or ``("proximity", "class_logits")``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a MicroNet export, an int8 export, an operator the backend does
            not run (named), a bad ``device``/``device_id``, or ``device="cuda"`` with a
            torch that has no CUDA.
        ImportError: torch or onnx (or, on a GPU, CuPy) is missing.
    """

    def __init__(self, path: str | Path, device: str = "auto", device_id: int = 0, *, cudnn_benchmark: bool = True) -> None:
        check_device(device, device_id)
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"ONNX model not found: {self.path}")
        torch = _import("torch")
        onnx = _import("onnx")
        cuda = self._wants_cuda(torch, device, device_id)
        model = self._load(onnx)
        self._torch = torch
        self._device = torch.device("cuda", device_id) if cuda else torch.device("cpu")
        self.device_id = device_id if cuda else 0
        self.name, self.device = ("torch-cuda", "cuda") if cuda else ("torch-cpu", "cpu")
        self.info = dataclasses.replace(self.info, precision="fp16" if cuda else "fp32")
        self._cupy = import_cupy("the torch backend on a GPU (peaks on the map where it lies)") if cuda else None
        dtype = torch.float16 if cuda else torch.float32
        with torch.inference_mode():
            self._graph = TorchGraph(model.graph, torch, self._device, dtype)
        self._stream = torch.cuda.Stream(self._device) if cuda else None
        if cuda and cudnn_benchmark:
            torch.backends.cudnn.benchmark = True  # process-wide, as documented
        log.info("torch backend: %s on %s (%s), outputs %s", self.path.name, self._device, self.info.precision, ", ".join(self.outputs))

    @staticmethod
    def _wants_cuda(torch: Any, device: str, device_id: int) -> bool:
        available = bool(torch.cuda.is_available())
        if device == "cuda" and not available:
            raise InputError(
                f"device='cuda': this torch ({torch.__version__}) sees no CUDA GPU "
                f"({'a CPU-only build' if torch.version.cuda is None else 'no usable device or driver'}); "
                "install a CUDA build of torch or use device='cpu'"
            )
        if available and device != "cpu" and device_id >= torch.cuda.device_count():
            raise InputError(f"device_id={device_id}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return device == "cuda" or (device == "auto" and available)

    def _load(self, onnx: Any) -> Any:
        """The parsed export, after checking it is a MicroNet model torch can run; sets
        ``info``, ``metadata`` and ``outputs``."""
        try:
            model = onnx.load(str(self.path))
        except Exception as exc:  # a protobuf DecodeError, or the file's own errors
            raise InputError(f"{self.path}: not an ONNX model ({exc})") from exc
        self.metadata = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in self.metadata:
            raise InputError(f"{self.path}: not a MicroNet model (no {METADATA_KEY!r} metadata); export it with `micronet export`")
        self.info = ModelInfo.from_json(self.metadata[METADATA_KEY], source=str(self.path))
        inputs = [(i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim)) for i in model.graph.input]
        self.outputs = tuple(o.name for o in model.graph.output)
        if inputs != [(INPUT_NAME, onnx.TensorProto.UINT8, 4)] or self.outputs not in ((OUTPUT_NAME,), (OUTPUT_NAME, CLASS_OUTPUT_NAME)):
            raise InputError(
                f"{self.path}: not a MicroNet model: expected a uint8 {INPUT_NAME!r} N×H×W×3 input and the outputs "
                f"{OUTPUT_NAME!r} (and {CLASS_OUTPUT_NAME!r} for a class head), got inputs {inputs} and outputs {list(self.outputs)}"
            )
        if self.info.precision == "int8":
            raise InputError(
                f"{self.path} is an int8 QDQ export, made for ONNX Runtime on the CPU; "
                "run the fp32 or fp16 export (`micronet export --precision fp16`) with the torch backend"
            )
        return model

    def __repr__(self) -> str:
        return f"TorchBackend({str(self.path)!r}, name={self.name!r}, device={str(self._device)!r})"

    # -- inference ------------------------------------------------------------------

    def infer(self, batch: Any) -> Any:
        """``(N, H, W, 3)`` uint8 RGB → ``(N, 1, H, W)`` float32 proximity maps
        (``(N, 1 + K, H, W)`` with a class head: the map, then the K logits).

        Args:
            batch: a C-contiguous NumPy array; on a GPU also a CuPy array or torch tensor
                on the backend's device (read in place, after the work queued on its
                stream).

        Returns:
            CuPy on the GPU (complete, owned by the caller), NumPy on the CPU.

        Thread-safe: calls share the backend's stream and run in the order submitted.
        """
        return self.infer_async(batch).wait()

    def infer_async(self, batch: Any, *, block: bool = True) -> TorchJob:
        """Queues a batch on the GPU and returns at once (on the CPU it runs now); the
        job's :meth:`~TorchJob.wait` gives what :meth:`infer` would. ``block`` is for the
        ``Backend`` protocol: a torch backend never runs out of contexts."""
        torch = self._torch
        with torch.inference_mode():
            if self._stream is None:
                return TorchJob(self, self._forward(self._as_tensor(batch)), None)
            with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
                out = self._forward(self._as_tensor(batch))
                event = torch.cuda.Event()
                event.record(self._stream)
            return TorchJob(self, out, event)

    def _forward(self, image: Any) -> Any:
        outs = self._graph.run({INPUT_NAME: image})
        # (N, 1, H, W) and (N, K, H, W) → (N, 1 + K, H, W) float32, where they lie.
        return outs[0].float() if len(outs) == 1 else self._torch.cat([o.float() for o in outs], dim=1)

    def _as_tensor(self, batch: Any) -> Any:
        """The batch as a uint8 tensor on the backend's device, checked."""
        torch = self._torch
        if isinstance(batch, np.ndarray):
            if not batch.flags.writeable:  # torch wants writable memory; it never writes here
                batch = batch.copy()
            tensor = torch.from_numpy(np.ascontiguousarray(batch))
            if self._stream is not None:
                # One host copy into pinned memory, then an asynchronous upload on our stream.
                tensor = tensor.pin_memory().to(self._device, non_blocking=True)
        elif self._stream is not None and (hasattr(batch, "__dlpack__") or isinstance(batch, torch.Tensor)):
            tensor = batch if isinstance(batch, torch.Tensor) else torch.from_dlpack(batch)  # waits for its stream
            if tensor.device != self._device:
                raise InputError(f"batch: an array on {tensor.device}, but this backend runs on {self._device}")
        else:
            raise InputTypeError(f"batch: expected an (N, H, W, 3) uint8 NumPy array, got {type(batch).__name__}")
        if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[3] != 3:
            raise InputError(f"batch: expected an (N, H, W, 3) uint8 array, got {str(tensor.dtype).replace('torch.', '')} shape {tuple(tensor.shape)}")
        return tensor

    def _hand_over(self, out: Any) -> Any:
        """The finished maps for the caller: NumPy on the CPU; on the GPU a CuPy view
        (DLPack, no copy), with torch told that CuPy's current stream uses the memory,
        so torch does not reuse it for a later batch while CuPy still reads it."""
        if self._cupy is None:
            return out.numpy()
        torch, cupy = self._torch, self._cupy
        with cupy.cuda.Device(self.device_id):
            ptr = int(cupy.cuda.get_current_stream().ptr)
            consumer = torch.cuda.default_stream(self._device) if ptr == 0 else torch.cuda.ExternalStream(ptr, device=self._device)
            out.record_stream(consumer)
            return cupy.from_dlpack(out)
