"""The chapter's banana data set, downloaded, verified by sha1 and extracted.

    tinyssd data download bananas --to data     # -> data/banana-detection/

The zip is fetched with urllib into ``<name>.part``; an interrupted download
continues with an HTTP Range request (and starts over if the server ignores
it). The zip stays beside the data folder, as ``d2l.download_extract`` leaves
it, so a deleted data folder is re-extracted without downloading.

Extraction is ``torchvision.datasets.utils.extract_archive``. The fetch stays
here: torchvision's ``download_url`` neither resumes, nor takes a timeout,
nor checks a sha1 (it checks md5; d2l publishes the sha1).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from .bananas import split_dir
from .base import DataError

log = logging.getLogger(__name__)

# d2l's DATA_HUB["banana-detection"]: the chapter's URL and the zip's sha1.
BANANAS_URL = "http://d2l-data.s3-accelerate.amazonaws.com/banana-detection.zip"
BANANAS_SHA1 = "5de26c8fce5ccdea9f91267273464dc968d20d72"
BANANAS_FOLDER = "banana-detection"  # the folder inside the zip
CHUNK = 1 << 16  # bytes per read


def download_bananas(
    to: str | Path, url: str = BANANAS_URL, sha1: str = BANANAS_SHA1, timeout: float = 30.0
) -> Path:
    """Download and extract the banana data set into ``to``; return ``to/banana-detection``.

    Nothing is downloaded when the data folder is already complete, nor when
    the zip is already there with the right sha1 (it is only extracted).

    Raises:
        DataError: offline, DNS failure, HTTP error, interrupted transfer, sha1
            mismatch (the bad file is removed) or a zip without ``bananas_train``.
    """
    to = Path(to)
    data = to / BANANAS_FOLDER
    if _is_complete(data):
        log.info("%s: already present", data)
        return data
    to.mkdir(parents=True, exist_ok=True)
    archive = to / f"{BANANAS_FOLDER}.zip"
    if archive.is_file() and _sha1(archive) != sha1:
        log.info("%s: sha1 differs from %s; downloading it again", archive, sha1)
        archive.unlink()
    if not archive.is_file():
        _fetch(url, archive, sha1, timeout)
    _extract(archive, data)
    return data


def _fetch(url: str, archive: Path, sha1: str, timeout: float) -> None:
    """Download ``url`` to ``archive`` via ``archive.part``, resuming it; check the sha1."""
    part = archive.with_name(archive.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "tinyssd"}
    if have:
        headers["Range"] = f"bytes={have}-"
    log.info("downloading %s to %s%s", url, archive, f" (resuming at {have} bytes)" if have else "")
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout) as response:
            resumed = have > 0 and response.status == 206
            if have and not resumed:
                log.info("%s: the server ignored the Range request; starting over", url)
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            with (
                part.open("ab" if resumed else "wb") as f,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=archive.name,
                    disable=None,
                ) as bar,
            ):
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            # urllib returns b"" when the connection drops early; the length tells.
            if total is not None and part.stat().st_size < total:
                raise _interrupted(url, part, f"{part.stat().st_size} of {total} bytes")
    except HTTPError as e:
        # 416: nothing left after `have` bytes, so the .part may already be whole.
        if not (e.code == 416 and have):
            raise DataError(f"{url}: HTTP error {e.code} {_one_line(e.reason)}") from None
    except URLError as e:
        raise DataError(
            f"{url}: cannot connect ({_one_line(e.reason)}); check the network "
            f"or put {archive.name} in {archive.parent} by hand"
        ) from None
    except (OSError, http.client.HTTPException) as e:
        raise _interrupted(url, part, _one_line(e) or type(e).__name__) from None
    got = _sha1(part)
    if got != sha1:
        part.unlink()
        raise DataError(f"{url}: sha1 {got} does not match the expected {sha1}; removed {part}")
    part.replace(archive)
    log.info("downloaded %s (%.1f MB, sha1 ok)", archive, archive.stat().st_size / 1e6)


def _interrupted(url: str, part: Path, detail: str) -> DataError:
    return DataError(f"{url}: download interrupted ({detail}); run again to resume from {part}")


def _extract(archive: Path, data: Path) -> None:
    """Unzip into a temporary folder beside ``data``, then move its data folder to ``data``.

    The zip may hold ``banana-detection/bananas_train/...`` (the chapter's) or
    ``bananas_train/...`` at its top.
    """
    from torchvision.datasets.utils import extract_archive  # imports every data set: lazily

    log.info("extracting %s", archive)
    with tempfile.TemporaryDirectory(dir=data.parent, prefix=f".{data.name}.partial-") as tmp:
        unzipped = Path(tmp) / "zip"
        try:
            extract_archive(archive, unzipped)
        except (zipfile.BadZipFile, OSError, RuntimeError) as e:
            raise DataError(f"{archive}: cannot extract ({_one_line(e)})") from None
        for inner in (unzipped / BANANAS_FOLDER, unzipped):
            if _is_complete(inner):
                break
        else:
            raise DataError(f"{archive}: no bananas_train/label.csv and bananas_val/label.csv")
        if data.exists():
            shutil.rmtree(data)  # an incomplete earlier extraction
        inner.replace(data)


def _is_complete(data: Path) -> bool:
    return all((split_dir(data, s) / "label.csv").is_file() for s in ("train", "val"))


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())
