"""ONNX Runtime backend: MicroNet ``.onnx`` models on the CUDA or CPU execution provider.

With the CUDA provider the proximity map stays on the GPU: the output is bound to CUDA
memory through ``IOBinding`` and handed to CuPy without a copy, so the peak finder
reads it in place and only coordinates travel to the host. Without CuPy the map is
copied to the host as a NumPy array.

The CPU provider is tuned for throughput on one model call at a time: one intra-op
thread per physical core (hyper-threads share the vector units a convolution
saturates), all graph optimisations, sequential execution (a MicroNet graph is a chain;
parallel branches would only add scheduling).

Its memory stays at one tile's activations however many tiles run: the CPU arena is on
and the memory pattern is off. With the pattern on (ONNX Runtime's default), the
second run of each input shape asks the arena for one block holding every planned
tensor; the arena cannot carve it from the chunks the first run freed and grows by as
much again: 2.3 GB for the wide fp32 model on 1024² tiles, where 1.6 GB is the first
run's. Without the arena, the allocator's fragmentation grows the peak with every new
tile shape (1.0 → 1.6 GB) and costs 20-45 % more CPU time; the arena without the pattern
is as fast as with it (``benchmarks/results/tile_memory.md``). The arena's own growth
by powers of two is what :func:`micronet.runtime.tiling.tile_bytes_per_pixel` measures.

``InferenceSession.run`` is thread-safe, and each call builds its own ``IOBinding``,
so one backend serves concurrent callers.
"""

from __future__ import annotations

import functools
import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..machine import has_vnni, physical_cores, usable_cpus
from ..errors import InputError, MissingFileError, MissingPackageError
from ..model_info import CLASS_OUTPUT_NAME, METADATA_KEY, ModelInfo
from ..optional import GPU_EXTRA, import_cupy
from . import BACKEND_DEVICES, check_device

__all__ = ["OnnxRuntimeBackend", "physical_cores"]

log = logging.getLogger(__name__)

DEVICES = BACKEND_DEVICES  # this backend's
_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingPackageError(
            "the ONNX Runtime backend needs onnxruntime: pip install 'micronet-sdk[cpu]' "
            "(or 'micronet-sdk[gpu]' on a CUDA machine, which brings onnxruntime-gpu; install one, not both)"
        ) from exc
    _warn_if_two_packages()
    return onnxruntime


@functools.lru_cache(maxsize=1)  # once per process
def _warn_if_two_packages() -> None:
    """Both ``onnxruntime`` and ``onnxruntime-gpu`` installed write the same module; the
    one installed last wins, and uninstalling either breaks the other."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    if len(found) == 2:
        log.warning(
            "both %s and %s are installed and overwrite each other's files; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'micronet-sdk[gpu]' (or [cpu])",
            *found,
        )


def _check_cuda_device(device_id: int) -> None:
    """``ValueError`` when CuPy can count the GPUs and there is no GPU ``device_id``
    (ONNX Runtime itself would only fail to create the session)."""
    cupy = import_cupy("GPU maps from ONNX Runtime", required=False)
    if cupy is None:
        return
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver: the CUDA provider will not load either, and says so
        return
    if device_id >= count:
        raise InputError(f"device_id={device_id}: this machine has {count} CUDA device(s), numbered from 0")


def _cuda_options(device_id: int) -> dict[str, str]:
    """The CUDA provider's options. TF32 off: the provider rounds fp32 convolutions to
    TF32 by default (10-bit mantissas), which an fp32 export's known-answer check at the
    fp32 tolerance would rightly fail; fp16 exports run in fp16 and are unaffected."""
    return {"device_id": str(device_id), "use_tf32": "0"}


def _describe(args: list[Any]) -> str:
    return ", ".join(f"{a.name}: {a.type} {list(a.shape)}" for a in args) or "none"


def _threads(threads: int | None) -> int:
    """CPU threads for the session: ``threads``, at most the CPUs this process may use
    (more only wait for each other: 64 threads on 2 CPUs ran 11× slower), with a
    warning when capped; by default the physical cores among those."""
    cpus = usable_cpus()
    if threads is None:
        return min(physical_cores(), cpus)
    if threads > cpus:
        log.warning("threads=%d: this process may use %d CPU%s; running %d threads (more only wait for each other)", threads, cpus, "s" * (cpus != 1), cpus)
        return cpus
    return threads


def _check_arguments(device: Any, device_id: Any, threads: Any) -> None:
    check_device(device, device_id)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads: expected an integer >= 1 or None, got {threads!r}")


def _wants_cuda(ort: Any, device: str) -> bool:
    """Whether to ask for the CUDA execution provider: ``"cuda"`` (refused when this ONNX
    Runtime has none), or ``"auto"`` when it has one."""
    available = ort.get_available_providers()
    if device == "cuda" and _CUDA_EP not in available:
        raise InputError(
            f"device='cuda': this ONNX Runtime has no CUDA execution provider (available: {', '.join(available)}); "
            f"install onnxruntime-gpu ({GPU_EXTRA}) or use device='cpu'"
        )
    return device == "cuda" or (device == "auto" and _CUDA_EP in available)


def _session_options(ort: Any, threads: int | None, want_cuda: bool) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = _threads(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; load failures surface as exceptions
    if not want_cuda:
        options.enable_mem_pattern = False  # bounded memory on the CPU: see the module's docstring
    return options


class OnnxRuntimeBackend:
    """Runs a MicroNet ONNX model with ONNX Runtime.

    Args:
        path: an ``.onnx`` model exported by ``micronet export`` (uint8 ``N×H×W×3`` in,
            float32 ``N×1×H×W`` out, ``ModelInfo`` in ``metadata_props["micronet"]``).
        device: ``"auto"`` (CUDA when ONNX Runtime has its CUDA provider and the
            provider loads, else CPU), ``"cpu"`` or ``"cuda"`` (an error without CUDA).
        threads: intra-op threads of the CPU provider, at most the CPUs this process may
            use (:func:`~micronet.runtime.machine.usable_cpus`; more are capped with a
            warning); default: the physical cores among them.
        device_id: the GPU the CUDA provider runs on (``Detector(device="cuda:N")``
            passes N); the maps are bound to and wrapped on that GPU.

    Attributes:
        name: ``"onnxruntime-cuda"`` or ``"onnxruntime-cpu"``.
        device: where :meth:`infer` returns the map: ``"cuda"`` (a CuPy array) when the
            CUDA provider runs and CuPy is installed, else ``"cpu"`` (NumPy).
        device_id: the GPU the CUDA provider runs on (0 on the CPU provider).
        info: the model's ``ModelInfo``.
        metadata: the model's ``metadata_props`` (``ModelInfo`` JSON, reference results).
        path: the model file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an ONNX model, or not a MicroNet model (the message
            lists the metadata keys and input/output signatures found); ``device`` is
            not one of ``auto, cpu, cuda``; ``device="cuda"`` without a working CUDA
            provider.
    """

    def __init__(
        self, path: str | PathLike[str], device: str = "auto", threads: int | None = None, *, device_id: int = 0
    ) -> None:
        _check_arguments(device, device_id, threads)
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"ONNX model not found: {self.path}")
        ort = _import_ort()
        want_cuda = _wants_cuda(ort, device)
        options = _session_options(ort, threads, want_cuda)
        if want_cuda and (device == "cuda" or device_id > 0):
            _check_cuda_device(device_id)
        providers: list[Any] = [(_CUDA_EP, _cuda_options(device_id)), _CPU_EP] if want_cuda else [_CPU_EP]
        self._session = self._load(ort, options, providers)
        self.info = self._check_signature()
        cuda = self._check_providers(device, want_cuda)
        self._device_id = self.device_id = device_id if cuda else 0
        self._cupy = import_cupy("GPU maps from ONNX Runtime", required=False) if cuda else None
        if cuda and self._cupy is None:
            log.info("CuPy is not installed: proximity maps are copied to the host (%s)", GPU_EXTRA)
        self.name = "onnxruntime-cuda" if cuda else "onnxruntime-cpu"
        self.device = "cuda" if self._cupy is not None else "cpu"
        self._warn_precision(cuda)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]  # the map, then the class logits if any

    def _check_providers(self, device: str, want_cuda: bool) -> bool:
        """Whether the session runs on CUDA; ``device='cuda'`` refuses a session that fell
        back to the CPU (ONNX Runtime does when the CUDA libraries do not load)."""
        running = self._session.get_providers()
        cuda = _CUDA_EP in running
        if want_cuda and not cuda:
            if device == "cuda":
                raise InputError(
                    f"device='cuda': ONNX Runtime's CUDA execution provider did not load (running: {', '.join(running)}); "
                    "check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use device='cpu'"
                )
            log.warning("%s: the CUDA execution provider did not load; running on the CPU", self.path.name)
        return cuda

    def _warn_precision(self, cuda: bool) -> None:
        """Warns of a model whose precision does not suit where it runs."""
        if not cuda and self.info.precision == "fp16":
            log.warning("%s is an fp16 model: slow on the CPU provider; use the fp32 or int8 export there", self.path.name)
        if not cuda and self.info.precision == "int8" and "7-bit" not in str(self.info.provenance.get("quantization", "")) and not has_vnni():
            # vpmaddubsw adds u8×s8 product pairs in saturating 16-bit arithmetic.
            log.warning(
                "%s is an int8 model with full 8-bit weights and this CPU has no VNNI: its int8 kernels can saturate "
                "and shift detections; re-export it with this version of micronet export (7-bit weights) and run micronet check",
                self.path.name,
            )
        if cuda and self.info.precision == "int8":
            log.warning("%s is an int8 model, made for the CPU; use the fp32 or fp16 export on the GPU", self.path.name)

    def _load(self, ort: Any, options: Any, providers: list[Any]) -> Any:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: not an ONNX model (the file is empty)")
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except state.InvalidProtobuf as exc:
            raise InputError(f"{self.path}: not an ONNX model (the file does not parse as an ONNX protobuf)") from exc
        except (state.InvalidArgument, state.NoModel) as exc:
            if "no graph" in str(exc).lower():
                raise InputError(f"{self.path}: not an ONNX model (no graph inside)") from exc
            raise InputError(f"{self.path}: ONNX Runtime could not load the model: {exc}") from exc
        except (state.Fail, state.InvalidGraph, state.NotImplemented, state.RuntimeException) as exc:
            raise InputError(f"{self.path}: ONNX Runtime could not load the model: {exc}") from exc

    def _check_signature(self) -> ModelInfo:
        meta = self._session.get_modelmeta().custom_metadata_map
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        problems = []
        if METADATA_KEY not in meta:
            problems.append(f"no {METADATA_KEY!r} metadata")
        ok_in = (
            len(inputs) == 1
            and inputs[0].type == "tensor(uint8)"
            and len(inputs[0].shape) == 4
            and inputs[0].shape[3] == 3
        )
        if not ok_in:
            problems.append("expected one input uint8 N×H×W×3")
        ok_out = (
            len(outputs) in (1, 2)
            and all(o.type == "tensor(float)" and len(o.shape) == 4 for o in outputs)
            and (len(outputs) == 1 or outputs[1].name == CLASS_OUTPUT_NAME)
        )
        if not ok_out:
            problems.append(f"expected one output float32 N×1×H×W (and optionally {CLASS_OUTPUT_NAME!r} N×K×H×W)")
        if problems:
            raise InputError(
                f"{self.path}: not a MicroNet model: {'; '.join(problems)}. Found metadata keys: "
                f"{', '.join(sorted(meta)) or 'none'}; inputs: {_describe(inputs)}; outputs: {_describe(outputs)}"
            )
        self.metadata = dict(meta)  # every metadata_props entry, e.g. the reference results
        return ModelInfo.from_json(meta[METADATA_KEY], source=str(self.path))

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({str(self.path)!r}, name={self.name!r}, device={self.device!r})"

    def close(self) -> None:
        """Releases the session and the memory it holds (its arena; on the GPU, its device
        memory). ``infer`` fails afterwards; idempotent."""
        self._session = None

    def infer(self, batch: np.ndarray) -> Any:
        """Proximity maps of a batch of images.

        Args:
            batch: ``(N, H, W, 3)`` uint8 RGB, C-contiguous.

        Returns:
            ``(N, 1, H, W)`` float32 maps: NumPy when ``device == "cpu"``; a CuPy array
            in ONNX Runtime's GPU memory when ``device == "cuda"`` (valid while
            referenced; ONNX Runtime reuses the memory once it is released). A model
            with a class head gives ``(N, 1 + K, H, W)``: the map, then the K class
            logits (one array, so tiling, flips and TTA treat them alike).
        """
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            got = f"{type(batch).__name__} {getattr(batch, 'dtype', '')} shape {getattr(batch, 'shape', '?')}"
            raise InputError(f"batch: expected an (N, H, W, 3) uint8 array, got {got}")
        batch = np.ascontiguousarray(batch)
        if self._cupy is None:
            outs = self._session.run(self._outputs, {self._input: batch})
            return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
        binding = self._session.io_binding()  # one per call: run() is thread-safe, a binding is not
        binding.bind_cpu_input(self._input, batch)
        # No buffer given: ONNX Runtime allocates the (N, 1, H, W) output on the GPU.
        for name in self._outputs:
            binding.bind_output(name, "cuda", self._device_id)
        # run() ends by synchronising the CUDA provider's stream (ONNX Runtime's default
        # run option), so the map is complete when other streams (CuPy's) read it;
        # synchronize_outputs() makes that explicit and costs nothing once synchronised.
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        values = binding.get_outputs()  # OrtValues sharing ownership of the GPU buffers
        if len(values) == 1:
            return self._wrap_cupy(values[0])
        return self._cupy.concatenate([self._wrap_cupy(v) for v in values], axis=1)  # on the device

    def _wrap_cupy(self, value: Any) -> Any:
        cupy = self._cupy
        if value.data_type() != "tensor(float)":  # pragma: no cover - checked at load
            raise InputError(f"{self.path}: expected a float32 output, got {value.data_type()}")
        shape = tuple(int(s) for s in value.shape())
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4
        # The OrtValue owns the device memory; UnownedMemory keeps it alive as long as
        # the CuPy array (or any view of it) exists.
        memory = cupy.cuda.UnownedMemory(value.data_ptr(), nbytes, value, self._device_id)
        return cupy.ndarray(shape, dtype=cupy.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))
