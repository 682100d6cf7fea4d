"""Training photos for `jaxstyle train`: every image under a folder, as shuffled fixed-size batches.

  * every file under the folder (recursively) whose extension is an image format jaxstyle reads;
  * each is decoded with Pillow, resized so its short side is ``image_size`` and centre-cropped to
    a square: float32[image_size, image_size, 3] in [0, 1];
  * the order is a permutation of the files drawn from ``(seed, epoch)``, so every epoch is
    reshuffled and the order is a pure function of the seed;
  * decoding runs in a small thread pool ahead of the consumer (Pillow releases the GIL while it
    decodes and resizes), so the device does not wait on it; ``Batch.wait_s`` says how long the
    consumer did wait;
  * an unreadable file is skipped (counted, named in ``skipped``) and the next one taken; once
    every file has been tried, fewer readable files than one batch is a `JaxstyleError` (a batch
    is never filled with repeats of the same few photos);
  * the position (files consumed since the start) is all the state: a loader started at a saved
    position yields exactly the batches an uninterrupted one would have.

A thread pool rather than an input-pipeline library (grain, tf.data): the work is one Pillow call
per file, the state is one integer, and it adds no dependency.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from jaxstyle import image_io
from jaxstyle.errors import JaxstyleError

__all__ = ["list_images", "load_square", "Batch", "Loader"]


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file (by extension) under ``root``, recursively, sorted. JaxstyleError for a
    missing or empty folder."""
    root = Path(root)
    if not root.is_dir():
        raise JaxstyleError(f"training data folder '{root}' not found; give a folder of photos "
                            "(e.g. COCO train2014) with --data")
    files = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in image_io.IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise JaxstyleError(f"no image files under '{root}'; give a folder of photos with --data")
    return files


def load_square(path: str | os.PathLike, size: int) -> np.ndarray:
    """float32[size, size, 3] in [0, 1]: the image resized (short side = size, bilinear on 8-bit)
    and centre-cropped. Raises whatever Pillow raises for a bad file (the loader counts it)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        # `reduce` lets JPEG decode at a fraction of the size first: much faster for big photos.
        im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, np.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class Batch:
    """images: float32[B, S, S, 3]; position: files consumed after this batch (resume from it);
    wait_s: how long the consumer waited for decoding."""

    images: np.ndarray
    position: int
    wait_s: float


class Loader:
    """Endless shuffled batches of ``files`` (see the module doc). Iterate it; close it (or use
    it as a context manager) to stop the workers.

    skipped: the files that could not be read so far, in order met.
    """

    def __init__(self, files: Sequence[Path], batch_size: int, image_size: int, seed: int = 0,
                 position: int = 0, workers: int | None = None, prefetch_batches: int = 4):
        if len(files) < batch_size:
            raise JaxstyleError(f"{len(files)} training images for a batch of {batch_size}; give "
                                "more images or lower --batch-size")
        self.files = list(files)
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.position = position
        self.skipped: list[Path] = []
        workers = workers or min(8, os.cpu_count() or 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="jaxstyle-data")
        self._window = prefetch_batches * batch_size
        self._orders: dict[int, np.ndarray] = {}

    def path_at(self, position: int) -> Path:
        """The file at global position ``position``: epoch ``position // N`` in that epoch's order."""
        return self.files[self._index_at(position)]

    def _index_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.files))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.files))}
        return int(self._orders[epoch][offset])

    def _load(self, path: Path):
        try:
            return load_square(path, self.image_size)
        except Exception:  # any decoding failure: the file is skipped, and counted
            return None

    def __iter__(self) -> Iterator[Batch]:
        pending: collections.deque = collections.deque()
        submitted = self.position
        consumed = self.position
        tried: set[int] = set()  # indices into files: how many are readable is known once all are
        unreadable: set[int] = set()
        while True:
            images = []
            waited = 0.0
            while len(images) < self.batch_size:
                while len(pending) < self._window:
                    pending.append((self._index_at(submitted), self._pool.submit(
                        self._load, self.path_at(submitted))))
                    submitted += 1
                index, future = pending.popleft()
                t0 = time.perf_counter()
                image = future.result()
                waited += time.perf_counter() - t0
                consumed += 1
                tried.add(index)
                if image is None:
                    self.skipped.append(self.files[index])
                    unreadable.add(index)
                else:
                    images.append(image)
                if len(tried) == len(self.files) and len(tried) - len(unreadable) < self.batch_size:
                    raise JaxstyleError(
                        f"only {len(tried) - len(unreadable)} of the {len(self.files)} training "
                        f"files could be read as images, fewer than one batch of "
                        f"{self.batch_size}; add photos to the --data folder or lower --batch-size")
            self.position = consumed
            yield Batch(np.stack(images), consumed, waited)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
