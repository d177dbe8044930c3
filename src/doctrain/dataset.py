"""Torch datasets over the prepared cache, and the class-balanced sampler of the reference recipe.

Every training sample carries its own seed (drawn by the sampler from the experiment seed and the
epoch), so augmentation is the same whatever the number of loader workers or their scheduling."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from doctrain import augment
from doctrain.cache import Cache
from doctrain.distributed import RankBatches, RankSlices


class ClassBalancedSampler(Sampler):
    """Yields (sample row, augmentation seed): a uniformly drawn class, then one of its samples.
    Drawn with replacement, `num_samples` per epoch; call set_epoch (Lightning does) for new draws.
    An epoch's draws depend only on (seed, epoch), so a resumed training can start inside one
    (start_at) and still get the samples the uninterrupted training got."""

    def __init__(self, class_ids: np.ndarray, num_samples: int, seed: int):
        self.rows_of_class = [np.flatnonzero(class_ids == c) for c in range(int(class_ids.max()) + 1)]
        self.num_samples, self.seed, self.epoch, self.first = num_samples, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.first = epoch, 0

    def start_at(self, epoch: int, first: int) -> None:
        """The next iteration yields epoch `epoch`'s draws from its `first`-th on (later epochs whole)."""
        self.epoch, self.first = epoch, first

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        classes = rng.integers(len(self.rows_of_class), size=self.num_samples)
        picks = rng.random(self.num_samples)
        seeds = rng.integers(2**31 - 1, size=self.num_samples)
        first = self.first
        for cls, pick, seed in zip(classes[first:], picks[first:], seeds[first:], strict=True):
            rows = self.rows_of_class[cls]
            yield int(rows[int(pick * len(rows))]), int(seed)


class TrainSamples(Dataset):
    def __init__(self, cache: Cache, augment_settings: dict):
        self.cache = cache
        self.samples = cache.split("train")
        # Plain integer columns: a pandas row lookup per sample cost a tenth of the loader's time.
        self.image, self.variant, self.class_id = (
            self.samples[column].to_numpy() for column in ("image", "variant", "class_id")
        )
        self.augment_settings = augment_settings

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """A batch, whole (the loader's collate_fn passes it on): the samples' uint8 pixels (a
        quarter of the float bytes to the device), their classes, and their augmentation's
        parameters, drawn here for the batch at once, which doctrain.augment.apply runs there."""
        rows, seeds = np.array(keys, dtype=np.int64).reshape(-1, 2).T
        pixels = self.cache.take(self.image[rows], self.variant[rows])
        params = augment.draw(self.augment_settings, seeds, pixels.shape[1])
        return (
            torch.from_numpy(pixels),
            torch.from_numpy(self.class_id[rows].astype(np.int64)),
            augment.to_batch(params),
        )


def _whole(batch):
    """collate_fn of a dataset that builds its batches itself (__getitems__)."""
    return batch


class ValSamples(Dataset):
    """Validation images in a fixed shuffled order, so each batch mixes classes (the metric scores
    the pairs inside each batch, as upstream), each with its position in that order (which tells
    the batches apart when the ranks of a training gather them)."""

    def __init__(self, cache: Cache, seed: int):
        samples = cache.split("val")
        order = np.random.default_rng(seed).permutation(len(samples))
        self.cache, self.samples = cache, samples.iloc[order].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples.iloc[row]
        image = self.cache.sample(int(sample["image"]), int(sample["variant"]))
        return torch.from_numpy(np.array(image)), int(sample["class_id"]), row


def _start_worker(worker_id: int) -> None:
    # Each loader worker is one process of many: OpenCV's own thread pool (one thread per core in
    # every worker) oversubscribed a 16-core GPU node. With this and the plain index columns, 16
    # workers went from about 4,900 to 10,000 samples/s there (scripts/bench_gpu.py).
    cv2.setNumThreads(1)
    # SLURM signals every process of a job to stop; a worker that died of it would fail the batch
    # the main process saves after (doctrain.resume), and the main process ends its workers.
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def loaders(cache: Cache, settings: dict, rank: int = 0, world: int = 1) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders from the `data` and `augment` settings, for rank `rank` of
    `world` processes training together (doctrain.distributed)."""
    data, loader = settings["data"], settings["data"]["loader"]
    workers = loader["num_workers"]
    common = {
        "num_workers": workers,
        "pin_memory": loader["pin_memory"] and torch.cuda.is_available(),
        "persistent_workers": loader["persistent_workers"] and workers > 0,
        "prefetch_factor": loader["prefetch_factor"] if workers > 0 else None,
        "worker_init_fn": _start_worker if workers > 0 else None,
    }
    train = TrainSamples(cache, settings["augment"])
    sampler = ClassBalancedSampler(
        train.samples["class_id"].to_numpy(), data["samples_per_epoch"], settings["seed"]
    )
    global_batches = BatchSampler(sampler, data["batch_size"], drop_last=True)
    train_loader = DataLoader(
        train, batch_sampler=RankSlices(global_batches, rank, world), collate_fn=_whole, **common
    )
    val = ValSamples(cache, settings["seed"])
    val_batches = BatchSampler(range(len(val)), data["val_batch_size"], drop_last=False)
    val_loader = DataLoader(val, batch_sampler=RankBatches(val_batches, rank, world), **common)
    return train_loader, val_loader
