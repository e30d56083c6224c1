"""Versioned, atomically written, pickle-free adapter files for the capstone chatbot.

Layout: ``root/<domain>/v0001/`` holds ``adapter_model.safetensors`` + ``adapter_config.json`` (the
standard peft adapter folder) + ``manifest.json`` (SHA-256 and size of both). A version folder is written
under a temporary name, fsync'ed, then renamed with ``os.replace`` — readers see a complete folder or none.
Loading never unpickles: any other file (``.bin``, ``.pt``, ``.pkl`` …) is refused, every hash is checked,
and the tensors are read with ``safetensors`` only.

Example::

    reg = AdapterRegistry("outputs/chatbot/adapters")
    v = reg.save("tax", state_dict, {"r": 8, ...})        # → 1
    state, config, manifest = reg.load("tax", v)

What the manifest proves: the files are the ones written (a flipped byte or a swapped file is caught). It
is not a signature: someone who can rewrite the folder can also rewrite ``manifest.json``; the chatbot
therefore also keeps the manifest's own SHA-256 in its database and passes it as ``expected_manifest``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from course_utils.core.models import sha256_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
ALLOWED_FILES = (WEIGHTS, CONFIG, MANIFEST)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")
FORMAT = "course-chatbot-adapter/1"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class AdapterIntegrityError(RuntimeError):
    """An adapter folder failed verification (missing, extra, pickled or tampered file); it was not loaded."""


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory, so a rename or a write survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Create folder ``final`` by ``write(tmp)`` into a temporary sibling, then one ``os.replace``.

    A crash or an exception before the rename leaves no ``final`` (only a ``.tmp-*`` folder that is
    removed here or ignored later); an existing ``final`` is never overwritten.
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} exists: versions are immutable")
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        for p in tmp.iterdir():
            _fsync_path(p)
        _fsync_path(tmp)
        os.replace(tmp, final)  # atomic on POSIX and Windows (same file system)
        _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class AdapterRegistry:
    """Per-domain, versioned adapter folders under ``root`` (versions start at 1; 0 means "the base")."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, domain: str, version: int) -> Path:
        """Folder of one version: ``root/<domain>/v0003``."""
        return self.root / domain / f"v{version:04d}"

    def versions(self, domain: str) -> list[int]:
        """Complete (renamed) versions of ``domain``, ascending; temporary folders are not versions."""
        folder = self.root / domain
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_DIR.match(p.name)))

    def save(self, domain: str, state: dict, config: dict, meta: dict | None = None) -> tuple[int, str]:
        """Write ``state`` (name → tensor) as the next version of ``domain``; return (version, manifest SHA-256)."""
        from safetensors.torch import save_file

        with self._lock:
            version = max(self.versions(domain), default=0) + 1

            def write(tmp: Path) -> None:
                tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
                save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
                (tmp / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
                files = {n: {"sha256": sha256_file(tmp / n), "size": (tmp / n).stat().st_size}
                         for n in (WEIGHTS, CONFIG)}
                manifest = {"format": FORMAT, "domain": domain, "version": version, "files": files,
                            "meta": meta or {}}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))

            final = write_dir_atomically(self.path(domain, version), write)
        return version, sha256_file(final / MANIFEST)

    def verify(self, domain: str, version: int, expected_manifest: str | None = None) -> list[str]:
        """Problems that forbid loading a version (empty list = safe to load)."""
        folder = self.path(domain, version)
        if not folder.is_dir():
            return [f"{folder} does not exist"]
        problems = []
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in PICKLE_SUFFIXES:
                problems.append(f"{p.name}: pickle-format file refused (unpickling can run arbitrary code)")
            elif p.name not in ALLOWED_FILES:
                problems.append(f"{p.name}: unexpected file (allowed: {', '.join(ALLOWED_FILES)})")
        if not (folder / MANIFEST).is_file():
            return problems + [f"{MANIFEST} missing"]
        if expected_manifest is not None and sha256_file(folder / MANIFEST) != expected_manifest:
            problems.append(f"{MANIFEST} differs from the SHA-256 recorded when this version went live")
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            files = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            return problems + [f"{MANIFEST} unreadable: {e!r}"]
        if manifest.get("format") != FORMAT or manifest.get("domain") != domain:
            problems.append(f"{MANIFEST} is not a {FORMAT} manifest of domain {domain!r}")
        for name in (WEIGHTS, CONFIG):
            p = folder / name
            if name not in files:
                problems.append(f"{name} not listed in {MANIFEST}")
            elif not p.is_file():
                problems.append(f"{name} missing")
            elif p.stat().st_size != files[name]["size"] or sha256_file(p) != files[name]["sha256"]:
                problems.append(f"{name}: SHA-256 differs from {MANIFEST} (file changed after it was saved)")
        return problems

    def load(self, domain: str, version: int, expected_manifest: str | None = None) -> tuple[dict, dict, dict]:
        """(state, config, manifest) of a verified version; ``AdapterIntegrityError`` if anything is off.

        Tensors are read by ``safetensors`` (a header + raw bytes format: nothing is executed); a file that
        only pretends to be safetensors (e.g. a renamed pickle) fails to parse and is refused.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        problems = self.verify(domain, version, expected_manifest)
        folder = self.path(domain, version)
        if problems:
            raise AdapterIntegrityError(f"refusing to load {folder}: " + "; ".join(problems))
        try:
            state = load_file(str(folder / WEIGHTS), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise AdapterIntegrityError(f"refusing to load {folder / WEIGHTS}: not a valid safetensors file "
                                        f"({e})") from None
        config = json.loads((folder / CONFIG).read_text())
        manifest = json.loads((folder / MANIFEST).read_text())
        return state, config, manifest

    def clean_temporary(self) -> list[Path]:
        """Remove leftover ``.tmp-*`` folders of interrupted saves; return what was removed."""
        removed = [p for p in self.root.glob("*/.tmp-*") if p.is_dir()]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
        return removed
