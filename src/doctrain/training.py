"""Training as a plain function: cache + settings -> the checkpoint chosen by validation AUROC.

Lightning's own checkpoints and logs live in a work folder beside the declared outputs; the
published checkpoint is a minimal one (weights + hyper-parameters), so its bytes depend only on the
weights, and `EmbeddingModule.load_from_checkpoint` rebuilds the model from it alone."""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing.util
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from doctrain import _io, plots, tensorboard_log
from doctrain.cache import Cache
from doctrain.config import ranks
from doctrain.dataset import loaders
from doctrain.devices import claim_gpu
from doctrain.distributed import start_ranks, wait_for_other_ranks
from doctrain.errors import UserError
from doctrain.lit_module import EmbeddingModule
from doctrain.metrics import roc_points, verification_metrics
from doctrain.provenance import kernel_path, state_dict_sha256
from doctrain.resume import LAST, ResumePoint, TrainingStopped, resumable, stop_on_signals

# What Lightning and its dependencies print on every run that says nothing about this one: a tip
# to install a cloud logger, a hint to launch with srun wherever SLURM is installed (the workflow
# launches the job, with srun where it runs several ranks under SLURM), a deprecation inside
# Lightning itself, and advice to average validation figures over the ranks (each rank already
# computes them from every rank's pairs, doctrain.distributed), and a warning that a loader that
# keeps no state cannot be resumed inside an epoch (doctrain.resume restores the sampler's position).
NOISE = (
    "The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"It is recommended to use `self.log\('val/",
    "You're resuming from a checkpoint that ended before the epoch ended",
)
TIPS = "💡 Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIPS)


@contextlib.contextmanager
def _without_noise():
    logger, tips = logging.getLogger("lightning.pytorch.utilities.rank_zero"), _DropTips()
    with warnings.catch_warnings():
        for message in NOISE:
            warnings.filterwarnings("ignore", message=message)
        logger.addFilter(tips)
        try:
            yield
        finally:
            logger.removeFilter(tips)


@contextlib.contextmanager
def _temporary_files_in(folder: Path):
    """Lightning writes each checkpoint to a temporary file and moves it into place; in the system's
    temporary folder that move is a copy across filesystems, which a kill or a full disk can leave
    half done under the final name. Beside the checkpoints it is an atomic rename. Absolute: whatever
    else makes temporary files meanwhile (TorchInductor's C++ builds) may change its directory.
    Multiprocessing's own folder is fixed first, in the system's: the loader workers' sockets live
    there, and a socket's path may not be longer than 107 bytes."""
    multiprocessing.util.get_temp_dir()
    folder.mkdir(parents=True, exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(folder.resolve())
    try:
        yield
    finally:
        tempfile.tempdir = saved


def train(
    settings: dict,
    cache_dir: str | Path,
    work_dir: str | Path,
    name: str = "model",
    resume_key: str = "",
    init_from: str | Path | None = None,
    tensorboard_dir: str | Path | None = None,
) -> dict | None:
    """Fit, pick the best epoch by val/auroc, evaluate it; return paths and figures (see _fit), or
    None in the ranks other than 0 of a training in several processes. TensorBoard's events go to
    `tensorboard_dir` (by default `tensorboard` beside the work folder)."""
    tensorboard_dir = Path(tensorboard_dir or Path(work_dir).parent / "tensorboard")
    with _without_noise():
        return _fit(settings, cache_dir, work_dir, name, resume_key, init_from, tensorboard_dir)


# Training speed of the demo's lcnet_050 at 96 px on one CPU core (153 samples/s on 2 cores,
# README "What the demo reaches"); cost grows with the pixels of an image.
CPU_SAMPLES_PER_S_PER_CORE = 75
LONG_ON_A_CPU_S = 3600


def compile_network(module: EmbeddingModule, mode: str) -> None:
    """trainer.compile: the network's forward torch.compile'd in place (the parameters, and so the
    checkpoint's keys, export and resume, stay the network's own; compiling the whole
    LightningModule broke its validation's gathering), and a GPU's whole-batch augmentation, whose
    shapes are fixed."""
    if mode != "none":
        module.net.forward = torch.compile(module.net.forward, mode=mode)
        module.augment_whole_batch = torch.compile(module.augment_whole_batch, mode=mode)


def _warn_if_long_on_a_cpu(samples: int, size: int) -> None:
    """A GPU recipe started on a CPU trains for hours while its progress bar barely moves: say so
    first, with an estimate."""
    rate = CPU_SAMPLES_PER_S_PER_CORE * torch.get_num_threads() * (96 / size) ** 2
    seconds = samples / rate
    if seconds > LONG_ON_A_CPU_S:
        print(
            f"warning: training {samples:,} samples on the CPU ({torch.get_num_threads()} threads, "
            f"{size} px) takes roughly {seconds / 3600:.1f} hours at about {rate:,.0f} samples/s; "
            "this config is meant for a GPU (configs/demo.yaml is sized for a CPU)",
            flush=True,
        )


def log_every(steps_per_epoch: int) -> int:
    """Log every n steps, about four times an epoch and at least every 50 steps, with n dividing
    the epoch, so that no log row falls on an epoch's first batch: the resume point is taken there,
    before Lightning writes that batch's row (doctrain.resume), and a resumed run would not write it."""
    wanted = max(1, min(50, steps_per_epoch // 4))
    every = max(n for n in range(1, wanted + 1) if steps_per_epoch % n == 0)
    return steps_per_epoch if every == 1 else every


X86_64 = ("x86_64", "AMD64")
# What torch and oneDNN read, once, when they first choose a kernel.
KERNEL_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def pin_cpu_kernels(trainer_settings: dict) -> None:
    """trainer.cpu_kernels for a deterministic CPU training: the instruction set torch and oneDNN
    may use (README, "The same model on every machine"). Set in this process's environment before
    its first kernel runs, so ranks and srun's tasks started from it inherit it."""
    caps = KERNEL_CAPS.get(trainer_settings["cpu_kernels"])
    if not (caps and trainer_settings["deterministic"] and trainer_settings["accelerator"] == "cpu"):
        return
    if platform.machine() not in X86_64:
        return
    os.environ.update(caps)
    chosen = torch.backends.cpu.get_cpu_capability()
    if chosen != caps["ATEN_CPU_CAPABILITY"].upper():
        # Torch ran something in this process before (a notebook, a test session): its choice stands,
        # and the kernel path this training records says which it is.
        print(
            f"warning: trainer.cpu_kernels {trainer_settings['cpu_kernels']} not applied: torch already "
            f"uses {chosen} kernels in this process (start a new one to pin them)"
        )


def _set_threads(trainer_settings: dict) -> None:
    """trainer.threads per process where the config pins them; else the job's threads
    (OMP_NUM_THREADS, what Snakemake granted) shared by the ranks on this node. Pinned, they are
    also what OMP_NUM_THREADS says: where it is unset, Lightning's DDP launcher would set its own
    count, and another thread count sums in another order (other weights)."""
    if trainer_settings["threads"]:
        torch.set_num_threads(trainer_settings["threads"])
        os.environ["OMP_NUM_THREADS"] = str(trainer_settings["threads"])
    elif trainer_settings["devices"] > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // trainer_settings["devices"]))


def _fit(
    settings: dict,
    cache_dir: str | Path,
    work_dir: str | Path,
    name: str,
    resume_key: str,
    init_from: str | Path | None,
    tensorboard_dir: Path,
) -> dict | None:
    """Fit, pick the best epoch by val/auroc, evaluate it; return paths and figures (None on ranks
    other than 0).

    Lightning's checkpoints in `work_dir` survive a killed job (Snakemake deletes only declared
    outputs), so a rerun with the same `resume_key` (settings, code, input) continues from the
    resume point (doctrain.resume: after the first batch of the epoch in progress, or the batch where
    a stop signal arrived); everything training draws is seeded per epoch, so it ends at the same
    weights."""
    work_dir = Path(work_dir)
    trainer_cfg, data = settings["trainer"], settings["data"]
    processes = ranks(trainer_cfg)
    pin_cpu_kernels(trainer_cfg)
    start_ranks(trainer_cfg)
    _set_threads(trainer_cfg)
    if trainer_cfg["accelerator"] != "cpu":
        claim_gpu(f"{name}: train", trainer_cfg["devices"])  # before anything initialises CUDA
    steps_per_epoch = data["samples_per_epoch"] // data["batch_size"]
    log_csv = work_dir / "log" / "metrics.csv"
    best = ModelCheckpoint(
        dirpath=work_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        monitor="val/auroc",
        mode="max",
        save_top_k=trainer_cfg["save_top_k"],
        auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        max_epochs=settings["schedule"]["epochs"],
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        num_nodes=trainer_cfg["num_nodes"],
        strategy="ddp" if processes > 1 else trainer_cfg["strategy"],
        sync_batchnorm=processes > 1 and trainer_cfg["accelerator"] != "cpu" and torch.cuda.is_available(),
        precision=trainer_cfg["precision"],
        gradient_clip_val=trainer_cfg["gradient_clip_val"],
        deterministic=trainer_cfg["deterministic"],
        benchmark=not trainer_cfg["deterministic"],  # cuDNN picks its fastest kernels (a GPU's only)
        # Its own folder: CSVLogger warns that a non-empty one "will be deleted" (the work folder
        # always holds the resume key).
        logger=CSVLogger(work_dir, name="log", version=""),
        callbacks=[best, TQDMProgressBar(refresh_rate=max(1, steps_per_epoch // 20))],
        num_sanity_val_steps=0,
        log_every_n_steps=log_every(steps_per_epoch),
        use_distributed_sampler=False,  # doctrain.distributed shares the batches
        enable_model_summary=False,
        default_root_dir=work_dir,
    )
    resume_from = resumable(work_dir, resume_key, prepare=trainer.is_global_zero)
    # Added once the resume point is known: a resumed training's events continue from it.
    trainer.loggers = [
        *trainer.loggers,
        tensorboard_log.logger(tensorboard_dir, resume_from, prepare=trainer.is_global_zero),
    ]
    cache = Cache(cache_dir)
    train_loader, val_loader = loaders(cache, settings, trainer.global_rank, trainer.world_size)
    resume_point = ResumePoint(
        work_dir / "checkpoints" / LAST, train_loader.batch_sampler.sampler, data["batch_size"], log_csv
    )
    trainer.callbacks.append(resume_point)
    num_classes = int(cache.split("train")["class_id"].max()) + 1
    # Seeded after the Trainer is built, so nothing its strategy's set-up might draw can shift the
    # initial weights.
    L.seed_everything(settings["seed"], workers=True, verbose=False)
    module = EmbeddingModule.from_settings(settings, num_classes, steps_per_epoch)
    if init_from:
        start_from(module, init_from, report=trainer.is_global_zero)
    compile_network(module, trainer_cfg["compile"])
    if trainer.is_global_zero and trainer.strategy.root_device.type == "cpu":
        _warn_if_long_on_a_cpu(settings["schedule"]["epochs"] * data["samples_per_epoch"], cache.image_size)
    started = time.perf_counter()
    # Rank 0 writes the checkpoints; the other ranks leave the work folder alone (under srun they
    # start beside rank 0 while it prepares the folder).
    writes = _temporary_files_in(work_dir / "tmp") if trainer.is_global_zero else contextlib.nullcontext()
    stop_on_signals()
    try:
        with writes:
            trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    except SIGTERMException:
        where = f"after batch {resume_point.batches} of epoch {resume_point.epoch}"
        saved = (
            f"its state is saved in {resume_point.path}, and a rerun continues from there"
            if resume_point.stopped
            else f"it was validating; a rerun continues from {resume_point.path}, saved earlier"
        )
        raise TrainingStopped(f"{name}: training stopped by a signal {where}; {saved}") from None
    seconds = time.perf_counter() - started
    samples = resume_point.batches_this_process * data["batch_size"]

    selected = EmbeddingModule.load_from_checkpoint(best.best_model_path, map_location="cpu", strict=True)
    trainer.validate(selected, val_loader, verbose=False)
    if not trainer.is_global_zero:
        return None  # rank 0 writes the outputs
    wait_for_other_ranks(trainer.strategy.launcher)
    scores, same = selected.last_val
    metrics = verification_metrics(scores, same)
    state_dict = selected.state_dict()
    epoch = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["epoch"]
    return {
        "name": name,
        "module": selected,
        "state_dict_sha256": state_dict_sha256(state_dict),
        "selected_epoch": int(epoch),
        "val": metrics,
        "roc": roc_points(scores, same),
        "train": {
            "seconds": round(seconds, 1),
            # What this process trained: a resumed training counts from where it resumed.
            "samples": samples,
            "samples_per_s": round(samples / seconds, 1),
            "resumed_at": dict(zip(("epoch", "batch"), resume_point.resumed_at, strict=True))
            if resume_point.resumed_at
            else None,
            "device": str(trainer.strategy.root_device),
            "kernels": kernel_path(trainer.strategy.root_device),
            "compile": trainer_cfg["compile"],
            "ranks": trainer.world_size,
            "accelerator": trainer.accelerator.__class__.__name__,
            "classes": num_classes,
        },
        "log": resume_point,
        "global_step": trainer.global_step,
    }


def start_from(module: EmbeddingModule, checkpoint: str | Path, report: bool = True) -> None:
    """Warm start: the network (backbone and head) of another experiment's trained checkpoint,
    every tensor matched by name and shape; the class weights are this training's own."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    theirs = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
    ours = module.net.state_dict()
    problems = [f"{key} is missing" for key in ours if key not in theirs]
    problems += [f"{key} is not in this model" for key in theirs if key not in ours]
    problems += [
        f"{key} has shape {list(theirs[key].shape)}, this model {list(ours[key].shape)}"
        for key in ours
        if key in theirs and theirs[key].shape != ours[key].shape
    ]
    if problems:
        raise UserError(
            f"model.init_from: {checkpoint} does not fit this experiment's network ({len(problems)} "
            f"tensors: {'; '.join(problems[:3])}); the backbone and model.embed_dim must be the same"
        )
    module.net.load_state_dict(theirs, strict=True)
    if report:
        print(f"starting from the network of {checkpoint} (model.init_from)")


def save_checkpoint(module: EmbeddingModule, path: str | Path, extra: dict) -> None:
    """A minimal Lightning-loadable checkpoint: weights, hyper-parameters and the selection facts."""
    payload = {
        "state_dict": module.state_dict(),
        EmbeddingModule.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
        "doctrain": extra,
    }
    # Saved through a buffer: torch names the archive inside the file after the file it writes to,
    # and the temporary name would make the bytes differ from build to build.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with _io.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def run_stage(
    settings: dict,
    cache: str | Path,
    init_from: str | Path | None,
    checkpoint: str | Path,
    metrics: str | Path,
    log_csv: str | Path,
    roc_png: str | Path,
    curves_png: str | Path,
    stamp: str | Path,
    name: str,
    work_dir: str | Path,
    tensorboard_dir: str | Path,
    resume_key: str,
) -> None:
    """Train on the cache whose summary (its stamp) is `cache`, from the network of the checkpoint
    `init_from` where there is one."""
    result = train(settings, Path(cache).parent, work_dir, name, resume_key, init_from, tensorboard_dir)
    if result is None:
        return  # a rank other than 0 of a training in several processes
    selection = {
        "epoch": result["selected_epoch"],
        "monitor": "val/auroc",
        "value": result["val"]["auroc"],
        "state_dict_sha256": result["state_dict_sha256"],
    }
    save_checkpoint(result["module"], checkpoint, selection)
    result["log"].write_log(Path(log_csv))
    plots.roc_curves({"val, pairs within batches": (result["roc"], result["val"])}, name, roc_png)
    plots.training_curves(log_csv, name, curves_png)
    tensorboard_log.add_figures(
        Path(tensorboard_dir), {"roc": roc_png, "training_curves": curves_png}, result["global_step"]
    )
    _io.write_json_atomic(
        metrics,
        {"selected": selection, "train": result["train"], "val": result["val"], "roc": result["roc"]},
        sort_keys=False,
    )
    # The stamp is written last: it is what downstream stages compare (the checkpoint goes to them
    # as an ancient() input), and it names the weights, not the file.
    _io.write_stamp(
        stamp,
        {"state_dict_sha256": result["state_dict_sha256"]},
        [checkpoint, metrics, log_csv, roc_png, curves_png],
    )
    val, speed = result["val"], result["train"]
    at = ", ".join(f"TPR {v['tpr']:.3f} at FPR {k}" for k, v in val["at_fpr"].items() if v["resolvable"])
    print(
        f"{name}: selected epoch {selection['epoch']} of {settings['schedule']['epochs']} by val/auroc: "
        f"AUROC {val['auroc']:.3f} on {val['positive_pairs']:,} same-class and {val['negative_pairs']:,} "
        f"different-class validation pairs; {at or 'no FPR target resolvable'}. Trained "
        f"{speed['samples']:,} samples in {speed['seconds']:.0f} s ({speed['samples_per_s']:,.0f} samples/s) "
        f"on {speed['device']}."
    )
    # Finished: nothing to resume. A later run of the same training (its checkpoint was damaged)
    # starts over rather than from a last.ckpt that may predate the selected epoch's bookkeeping.
    (Path(work_dir) / "resume-key.txt").unlink()
