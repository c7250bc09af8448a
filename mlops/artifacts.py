"""Model weights on disk: safetensors files under settings.ARTIFACT_ROOT, with their SHA-256.

Every file of a run lives under ``mlops/runs/<run id>/``, so a redelivered run can start
clean by removing that one folder, and no orphan file survives a killed worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from django.conf import settings
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# The safetensors metadata key holding a model's reproducibility record (JSON; the format
# allows str → str only): what ``mlops.data.reproducibility_record`` gives for its run.
REPRODUCIBILITY_KEY = "reproducibility"


def run_dir_relative(run_id: int) -> str:
    return f"mlops/runs/{run_id}"


def absolute(relative: str) -> Path:
    root = Path(settings.ARTIFACT_ROOT).resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ValueError("artifact path escapes ARTIFACT_ROOT")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(*, relative: str, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write weights atomically (temp file, then rename) and return their SHA-256."""
    path = absolute(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return sha256_of(path)


def reproducibility_metadata(*, run) -> dict[str, str]:
    """Safetensors metadata carrying ``run``'s reproducibility record (feature order and
    encoding, classes, person-split rule without its key, seed), so the weights file alone
    says how to build the inputs it expects. Never the audit's record ids."""
    from mlops.data import reproducibility_record

    record = reproducibility_record(run=run)
    return {REPRODUCIBILITY_KEY: json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)}


def read_metadata(*, relative: str) -> dict[str, str]:
    """The safetensors metadata of a weights file (without loading its tensors)."""
    with safe_open(str(absolute(relative)), framework="pt") as handle:
        return dict(handle.metadata() or {})


def link_or_copy(*, source: str, target: str) -> None:
    """Give ``target`` the content of ``source``: a hard link when the file system allows
    (instant, and deleting either name leaves the other intact), else a copy."""
    source_path, target_path = absolute(source), absolute(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    if target_path.exists():  # a redelivered unlearning re-creates its run folder's files
        target_path.unlink()
    try:
        os.link(source_path, target_path)
    except OSError:
        shutil.copyfile(source_path, target_path)


def load_weights(*, relative: str, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load weights, refusing a file whose hash no longer matches the registry."""
    path = absolute(relative)
    if expected_sha256 is not None and sha256_of(path) != expected_sha256:
        raise ValueError(f"artifact {relative} does not match its recorded SHA-256")
    return load_file(str(path))


def remove_run_files(run_id: int) -> int:
    """Delete every file of a run; returns how many files were removed."""
    path = absolute(run_dir_relative(run_id))
    if not path.exists():
        return 0
    count = sum(1 for p in path.rglob("*") if p.is_file())
    shutil.rmtree(path)
    return count


def run_files(run_id: int) -> list[Path]:
    path = absolute(run_dir_relative(run_id))
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Opacus's GradSampleModule stores the model under ``_module.``; store plain names."""
    return {k.removeprefix("_module."): v for k, v in state_dict.items()}
