"""What the training benchmarks share: Lightning fit steps timed after a warm-up, on a CPU or a GPU,
with the GPU's utilisation meanwhile. doctrain is imported where it is used, so a benchmark that
measures another revision's library (bench_augment.py --compare) gets that library."""

from __future__ import annotations

import collections
import io
import statistics
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 20  # cuDNN autotuning, worker start-up and allocator growth are left out of the timing
BLOCK = 10  # batches of one source in a row when sources are interleaved
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]


def files_at(revision: str, dest: Path, *paths: str) -> Path:
    """The checkout's `paths` as they were at a git revision, extracted into `dest`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, *paths], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


class StepTimer(L.Callback):
    """Wall time of the training batches after the warm-up, synchronised with a GPU."""

    def __init__(self, gpu: bool):
        self.gpu = gpu

    def _synchronise(self) -> None:
        if self.gpu:
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == WARMUP_STEPS:
            self._synchronise()
            if self.gpu:
                torch.cuda.reset_peak_memory_stats()
            self.started = time.perf_counter()

    def on_train_end(self, trainer, module):
        self._synchronise()
        self.seconds = time.perf_counter() - self.started
        self.steps = trainer.global_step - WARMUP_STEPS


class Utilisation:
    """GPU utilisation (nvidia-smi every 0.2 s) while the block runs; nothing on a CPU."""

    def __init__(self, gpu: bool):
        self.gpu, self.samples = gpu, []

    def __enter__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        if self.gpu:
            self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(0.2):
            out = subprocess.run(NVIDIA_SMI, capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.samples.append((time.perf_counter(), int(out)))

    def __exit__(self, *exc):
        self.stop.set()
        if self.gpu:
            self.thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        """Mean utilisation (%) of the polls between two perf_counter times (the timed steps: the
        warm-up's compilation would read as an idle GPU)."""
        inside = [value for at, value in self.samples if start <= at <= end]
        return statistics.fmean(inside) if inside else None


def fit_rate(
    settings: dict,
    loader,
    num_classes: int,
    steps: int,
    accelerator: str = "gpu",
    precision: str = "32",
    channels_last: bool = False,
    compile_mode: str = "none",
) -> dict:
    """Samples/s of `steps` Lightning fit steps of the experiment's model on `loader` after the
    warm-up (which pays any compilation: raise the warm-up where it does not), with the peak GPU
    memory (MiB) and mean utilisation (%) on a GPU. `compile_mode`: trainer.compile, as the training
    applies it."""
    gpu = accelerator == "gpu"
    timer = StepTimer(gpu)
    utilisation = fit(
        settings, loader, num_classes, steps, accelerator, timer, precision, channels_last, compile_mode
    )
    return {
        "samples/s": timer.steps * settings["data"]["batch_size"] / timer.seconds,
        "peak MiB": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "utilisation %": utilisation.mean_between(timer.started, timer.started + timer.seconds),
    }


def interleaved_rates(
    settings: dict, sources: dict, num_classes: int, steps: int, block: int = BLOCK
) -> dict[str, float]:
    """Samples/s of each source's batches in one Lightning fit on the CPU that takes the sources in
    turn, `block` batches at a time, `steps` timed batches in all: side by side, under the same
    noise of a shared machine and in the same training state. (Not on a GPU: the timer does not
    wait for the device.) With loader workers a source's workers keep reading while the others
    train: it flatters a real data path with workers."""
    interleaved = Interleaved(sources, block, WARMUP_STEPS + steps)
    timer = KindTimer(interleaved.kinds, block)
    fit(settings, DataLoader(interleaved, batch_size=None), num_classes, steps, "cpu", timer)
    return {
        kind: timer.steps[kind] * settings["data"]["batch_size"] / timer.seconds[kind] for kind in sources
    }


class Interleaved(IterableDataset):
    """`total` batches from the sources in turn, `block` at a time; `kinds` says whose each was."""

    def __init__(self, sources: dict, block: int, total: int):
        self.sources, self.block, self.total, self.kinds = sources, block, total, []

    def __iter__(self):
        batches = {kind: iter(source) for kind, source in self.sources.items()}
        names = list(batches)
        for index in range(self.total):
            kind = names[index // self.block % len(names)]
            self.kinds.append(kind)
            yield next(batches[kind])


class KindTimer(L.Callback):
    """Per kind of batch (Interleaved), the wall time from the end of one timed training batch to
    the end of the next, after the warm-up. Each interval holds one fetch (Lightning fetches the
    next batch before it runs a step) and one step; the last batch of a block is left out, as its
    interval holds the first fetch of the next block's kind."""

    def __init__(self, kinds: list[str], block: int):
        self.kinds, self.block = kinds, block
        self.seconds, self.steps = collections.Counter(), collections.Counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if batch_idx > WARMUP_STEPS and (batch_idx + 1) % self.block:
            kind = self.kinds[batch_idx]
            self.seconds[kind] += now - self.ended
            self.steps[kind] += 1
        self.ended = now


def fit(
    settings: dict,
    loader,
    num_classes: int,
    steps: int,
    accelerator: str,
    timer: L.Callback,
    precision: str = "32",
    channels_last: bool = False,
    compile_mode: str = "none",
) -> Utilisation:
    """WARMUP_STEPS + `steps` Lightning fit steps of the experiment's model on `loader`, timed by
    `timer`; the GPU's utilisation meanwhile."""
    from doctrain.lit_module import EmbeddingModule

    model = {**settings["model"], "channels_last": channels_last}
    module = EmbeddingModule.from_settings(
        {**settings, "model": model}, num_classes, steps_per_epoch=WARMUP_STEPS + steps
    )
    gpu = accelerator == "gpu"
    trainer = L.Trainer(
        max_steps=WARMUP_STEPS + steps,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        deterministic=not gpu,
        benchmark=gpu,
        gradient_clip_val=settings["trainer"]["gradient_clip_val"],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if compile_mode != "none":
        from doctrain.training import compile_network

        torch._dynamo.reset()  # each row compiles afresh, and no row meets dynamo's recompile limit
        compile_network(module, compile_mode)
    with Utilisation(gpu) as utilisation:
        trainer.fit(module, loader)
    return utilisation
