"""The course's one download helper: fetch once, check a SHA-256, cache, fail clearly offline.

Optional data only: the default path of every notebook is offline (CONTRIBUTING.md). Tests point this
at a local HTTP server on 127.0.0.1.
"""

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CACHE_VAR = "LLMSCRATCH_CACHE"


class DownloadError(RuntimeError):
    pass


def cache_dir() -> Path:
    """$LLMSCRATCH_CACHE, else ~/.cache/llmscratch."""
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "llmscratch")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, sha256: str, filename: str | None = None, cache: Path | None = None,
             timeout: float = 30.0) -> Path:
    """Return the path of the cached file for `url`, downloading it first if needed.

    It is saved in the cache folder as `filename`, by default the last part of the URL's path; either
    must be a plain file name. The file is written under a temporary name and moved into place only
    once its SHA-256 matches, so an interrupted or tampered download never poisons the cache.
    """
    sha256 = sha256.lower()
    folder = Path(cache) if cache is not None else cache_dir()
    name = filename or urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    # A name with a folder in it ("../x", "/tmp/x") would read, replace or delete a file outside the cache.
    if name in ("", ".", "..") or Path(name).name != name:
        what = (f"filename {name!r} is not a plain file name" if filename
                else f"the URL {url} does not end in a file name")
        raise ValueError(f"{what}, so the file would not be saved inside the cache folder {folder}: "
                         "pass filename= a name without folders, e.g. filename='data.txt'")
    target = folder / name
    if target.exists():
        if sha256_of(target) == sha256:
            return target
        target.unlink()  # stale or corrupt cache entry: fetch again

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=target.name, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {url} ({err}). This data is optional: are you offline? "
            f"Either connect and run again, or copy the file by hand to {target}"
        ) from err

    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}. "
            "The file changed upstream or the download was corrupted; nothing was cached"
        )
    tmp.replace(target)
    return target
