"""Face LoRA training on a base Stable Diffusion pipeline (diffusers + peft).

FaceChain's recipe: LoRA on the UNet attention projections, text encoder frozen, cosine
learning rate, batch 1, random flip. What is faster here: every photo (and its mirror) goes
through the VAE once and the caption through the text encoder once; each step then samples
from the cached latent distribution and crop-jitters in latent space.

Randomness is drawn per step from (seed, step), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import FaceChainError, ModelUnavailable
from engine.models.base_model import BasePipeline
from engine.models.family import SDXL, TrainingPlan, training_plan
from engine.training.files import CHECKPOINT_FILE, META_FILE

log = logging.getLogger(__name__)
ADAPTER = "facechain_training"
# The host reads the losses (hands progress on, looks for a cancel) about once a second, and at most every
# READ_EVERY steps: on a GPU, blocks of steps it runs without waiting for the host; on a CPU, every step.
READ_SECONDS, READ_EVERY = 1.0, 25
COMPILE_FAILED = False  # a compiled training failed in this process: the rest train eagerly
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


class TrainingCancelled(FaceChainError):
    """Training stopped on request; a checkpoint was saved, so it resumes where it stopped."""


@dataclass(frozen=True)
class TrainOptions:
    steps: int
    rank: int = 4
    alpha: float = 4.0
    learning_rate: float = 1.5e-4
    resolution: int = 512
    seed: int = 0
    checkpoint_every: int = 50
    compile: bool = False  # on CUDA: the UNet through torch.compile's CUDA graphs (falls back by itself)


@dataclass(frozen=True)
class TrainProgress:
    step: int  # steps done
    total: int
    loss: float
    eta_seconds: float


@dataclass
class TextConditioning:
    """The caption as the UNet reads it: the text encoder's hidden states, and on SDXL the second
    encoder's pooled embedding, which goes in with the time ids (sizes and crop) of each step."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def added_conditions(self, original: int, crop: tuple[int, int], target: int) -> dict:
        if self.pooled is None:
            return {}
        time_ids = torch.tensor([[original, original, *crop, target, target]], device=self.pooled.device,
                                dtype=self.pooled.dtype)
        return {"added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": time_ids}}


@dataclass
class TrainResult:
    folder: Path
    meta: dict


def fingerprint(photos: list[Path], caption: str, options: TrainOptions, base_reference: str) -> str:
    """Identifies a training run; a checkpoint is only resumed by the same run."""
    digest = hashlib.sha256()
    for photo in photos:
        digest.update(hashlib.sha256(photo.read_bytes()).digest())
    digest.update(json.dumps([caption, asdict(options), base_reference], sort_keys=True).encode())
    return digest.hexdigest()


def _image_tensor(path: Path, size: int, flip: bool) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


@torch.no_grad()
def _cache_inputs(base: BasePipeline, photos: list[Path], caption: str, options: TrainOptions, device: torch.device):
    """Latent mean/std per photo and mirror, plus the caption's text embedding, on `device`. The text
    encoder and the VAE visit `device` only for this (they stay on the CPU under offload)."""
    pipe = base.pipeline
    dtype = pipe.unet.dtype
    text = _encode_caption(base, caption, device)
    jitter = options.resolution // 16  # pixels of crop jitter each side
    latents = []
    # SDXL's own VAE overflows in fp16 (its config says force_upcast): it encodes in fp32 then.
    upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False)
    with _visiting(pipe.vae, device, torch.float32 if upcast else None):
        for photo in photos:
            for flip in (False, True):
                pixels = _image_tensor(photo, options.resolution + 2 * jitter, flip).to(device, pipe.vae.dtype)
                distribution = pipe.vae.encode(pixels).latent_dist
                latents.append((distribution.mean.to(device, dtype), distribution.std.to(device, dtype)))
    return latents, text


def _encode_caption(base: BasePipeline, caption: str, device: torch.device) -> TextConditioning:
    """The caption through the base text encoder(s) alone: a style LoRA the last portrait left active on them
    must not colour what the face model learns."""
    pipe = base.pipeline
    dtype = pipe.unet.dtype
    with _adapters_off(pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if base.family is SDXL:
            with _visiting(pipe.text_encoder, device), _visiting(pipe.text_encoder_2, device):
                hidden, _, pooled, _ = pipe.encode_prompt(caption, device=device, do_classifier_free_guidance=False)
            return TextConditioning(hidden.to(device, dtype), pooled.to(device, dtype))
        return _encode_sd15_caption(pipe, caption, device, dtype)


@contextmanager
def _adapters_off(*modules: torch.nn.Module | None):
    """Every LoRA layer in `modules` switched off inside the block, and back as it was after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [layer for module in modules if module is not None for layer in module.modules()
              if isinstance(layer, BaseTunerLayer)]
    were_off = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, off in zip(layers, were_off):
            layer.enable_adapters(not off)


def _encode_sd15_caption(pipe, caption: str, device: torch.device, dtype: torch.dtype) -> TextConditioning:
    with _visiting(pipe.text_encoder, device):
        ids = pipe.tokenizer(caption, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        return TextConditioning(pipe.text_encoder(ids)[0].to(device, dtype))


@contextmanager
def _visiting(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None):
    """`module` on `device` (and in `dtype`) inside the block, back where and as it was after."""
    home = next(module.parameters())
    home_device, home_dtype = home.device, home.dtype
    module.to(device, dtype or home_dtype)
    try:
        yield module
    finally:
        module.to(home_device, home_dtype)


@contextmanager
def _offload_paused(base: BasePipeline):
    """Training needs the UNet to stay on the execution device: take model offload's hooks off for
    the run (the UNet alone then lives on the GPU) and put them back after."""
    if not base.plan.cpu_offload:
        yield base.execution_device
        return
    device = base.execution_device
    base.pipeline.remove_all_hooks()
    base.pipeline.unet.to(device)
    try:
        yield device
    finally:
        base.pipeline.enable_model_cpu_offload(device=base.device)


def compiles_on(device: torch.device) -> bool:
    """Where compiled training is tried: CUDA (CUDA graphs are what it is for)."""
    return device.type == "cuda"


@contextmanager
def _compiled(unet, wanted: bool):
    """The UNet compiled in place (nn.Module.compile: peft still sees its adapters) for the block, as it was after
    (the generator draws with it eagerly). The compiled code is torch's to cache: another member's run reuses it."""
    if not wanted or COMPILE_FAILED:
        yield
        return
    unet.compile(mode="reduce-overhead", dynamic=False)
    try:
        yield
    finally:
        unet._compiled_call_impl = None  # nn.Module.compile's own attribute: back to the eager forward


def _eager_after_failure(unet, error: Exception) -> None:
    """A compiled step that failed (an op the compiler cannot take, a capture the driver refuses): this run goes on
    eagerly, and so does every later run of this process; said once."""
    global COMPILE_FAILED
    if not COMPILE_FAILED:
        log.warning("compiled training failed (%s: %s); training without torch.compile from now on",
                    type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "")
    COMPILE_FAILED = True
    unet._compiled_call_impl = None


def training_room(base: BasePipeline) -> TrainingPlan:
    """Whether this GPU has room to train a face model of the base's family, and how."""
    if base.device != "cuda":
        return training_plan(base.family, None)
    from engine.models.base_model import GIB, usable_gpu_bytes

    return training_plan(base.family, usable_gpu_bytes() / GIB)


def adapter_metadata(options: TrainOptions) -> dict:
    """The LoRA config a loader needs to rebuild the adapter at its trained scale (alpha / rank),
    kept to the keys every peft version knows."""
    return {"r": options.rank, "lora_alpha": options.alpha, "target_modules": TARGET_MODULES,
            "init_lora_weights": "gaussian"}


def _save_checkpoint(path: Path, state: dict) -> None:
    scratch = path.with_suffix(".tmp")
    torch.save(state, scratch)
    os.replace(scratch, path)  # never a half-written checkpoint


def train_face_lora(
    base: BasePipeline,
    photos: list[Path],
    caption: str,
    output: Path,
    options: TrainOptions,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train a face LoRA into `output` (created whole at the end; `output.partial` meanwhile). A run
    resumes from `output.partial/checkpoint.pt`; `on_checkpoint` is told of each one written."""
    import diffusers
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    if not photos:
        raise FaceChainError("No accepted selfies to train on: enroll some photos first.")
    room = training_room(base)
    if not room.fits:  # before anything is added to the UNet
        raise ModelUnavailable(room.reason, "base model family")
    pipe = base.pipeline
    unet = pipe.unet
    work = output.with_name(output.name + ".partial")
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    checkpoint_path = work / CHECKPOINT_FILE
    run_id = fingerprint(photos, caption, options, base.reference)

    for module in (unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    if ADAPTER in getattr(unet, "peft_config", {}):
        unet.delete_adapters(ADAPTER)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(options.seed)  # the initial LoRA weights follow the run's seed too
        # Face and style adapters of the generator live on the same UNet by design.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        unet.add_adapter(LoraConfig(r=options.rank, lora_alpha=options.alpha, init_lora_weights="gaussian",
                                    target_modules=TARGET_MODULES), adapter_name=ADAPTER)
    unet.set_adapters([ADAPTER])
    cast_training_params(unet, dtype=torch.float32)  # LoRA weights train in fp32 even on an fp16 base
    parameters = [p for p in unet.parameters() if p.requires_grad]
    # On a GPU, AdamW's fused kernel: one launch for every LoRA tensor instead of several per tensor.
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=1e-2,
                                  fused=base.execution_device.type == "cuda" or None)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=options.steps)
    noise_scheduler = DDPMScheduler.from_config(base.scheduler_config or pipe.scheduler.config)
    # fp16 weights train with fp32 LoRA parameters and a loss scale (bf16 and fp32 need none).
    scaler = torch.amp.GradScaler("cuda", enabled=pipe.unet.dtype == torch.float16 and
                                  base.execution_device.type == "cuda")

    start, losses = 0, []
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == run_id:
            set_peft_model_state_dict(unet, state["lora"], adapter_name=ADAPTER)
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["lr_schedule"])
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            start, losses = state["step"], state["losses"]
            log.info("resuming training of %s at step %d of %d", output, start, options.steps)
        else:
            log.info("checkpoint in %s is for other photos or settings: starting over", work)

    def checkpoint(step: int) -> None:
        _save_checkpoint(checkpoint_path, {
            "fingerprint": run_id, "step": step, "losses": losses,
            "lora": get_peft_model_state_dict(unet, adapter_name=ADAPTER),
            "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
            "scaler": scaler.state_dict(),
        })
        if on_checkpoint is not None:
            on_checkpoint(checkpoint_path)

    checkpointing = room.gradient_checkpointing or base.plan.attention_slicing  # trade compute for activations
    try:
        with _offload_paused(base) as device:
            latents, text = _cache_inputs(base, photos, caption, options, device)
            if checkpointing:
                unet.enable_gradient_checkpointing()
            unet.train()
            with _compiled(unet, options.compile and compiles_on(device)):
                run = TrainingRun(unet, device, noise_scheduler, optimizer, scaler, lr_schedule, parameters, latents,
                                  text, options, pipe.vae.config.scaling_factor)
                _loop(run, start, losses, checkpoint, on_progress, should_cancel)
        weights = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
        # The adapter's config (rank and alpha) travels in the file: without it a loader assumes
        # alpha = rank and the face model comes back at the wrong scale.
        getattr(diffusers, base.family.pipeline_class).save_lora_weights(
            work, unet_lora_layers=weights, safe_serialization=True, unet_lora_adapter_metadata=adapter_metadata(options))
    finally:
        unet.eval()
        if checkpointing:
            unet.disable_gradient_checkpointing()
        unet.delete_adapters(ADAPTER)

    meta = {
        "base_model": base.reference, "family": base.family.name, "caption": caption, "photos": [p.name for p in photos],
        "steps": options.steps, "rank": options.rank, "alpha": options.alpha,
        "learning_rate": options.learning_rate, "resolution": options.resolution, "seed": options.seed,
        "resumed_from_step": start, "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "loss_curve": [round(float(v), 5) for v in losses[:: max(1, len(losses) // 200)]],
    }
    (work / META_FILE).write_text(json.dumps(meta, indent=2))
    checkpoint_path.unlink(missing_ok=True)
    if output.exists():
        shutil.rmtree(output)
    os.replace(work, output)
    return TrainResult(output, meta)


@dataclass
class StepDraws:
    """The random draws of a block of steps, each from its own (seed, step) generator as a step alone would draw
    them, moved to the device in one copy: a step then reads them without waiting on the host."""

    picks: list[int]  # which photo (or mirror)
    crops: list[tuple[int, int]]  # the latent crop's x and y
    sample_noise: torch.Tensor  # (steps, 1, 4, h, w): the latent sample's draw from its distribution
    noise: torch.Tensor  # (steps, 1, 4, h, w): the noise added at the step's timestep
    timesteps: torch.Tensor  # (steps, 1)


def _draw_block(options: TrainOptions, steps: range, latents, latent_size: int, pad: int, timesteps: int,
                device: torch.device, dtype: torch.dtype) -> StepDraws:
    picks, crops, sample_noise, noise, times = [], [], [], [], []
    for step in steps:
        rng = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
        picks.append(int(torch.randint(len(latents), (1,), generator=rng)))
        x, y = (int(v) for v in torch.randint(pad + 1, (2,), generator=rng))
        crops.append((x, y))
        shape = (*latents[picks[-1]][0].shape[:-2], latent_size, latent_size)
        sample_noise.append(torch.randn(shape, generator=rng))
        noise.append(torch.randn(shape, generator=rng))
        times.append(torch.randint(timesteps, (1,), generator=rng))

    def to_device(tensors: list[torch.Tensor], cast: torch.dtype | None) -> torch.Tensor:
        block = torch.stack(tensors)
        if device.type == "cuda":
            block = block.pin_memory()  # a copy that does not wait for the GPU's queue
        return block.to(device, cast or block.dtype, non_blocking=True)

    return StepDraws(picks, crops, to_device(sample_noise, dtype), to_device(noise, dtype), to_device(times, None))


@dataclass
class TrainingRun:
    """What every step of one training uses."""

    unet: torch.nn.Module
    device: torch.device
    noise_scheduler: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_schedule: object
    parameters: list[torch.nn.Parameter]
    latents: list[tuple[torch.Tensor, torch.Tensor]]  # each photo's (and mirror's) latent mean and std
    text: TextConditioning
    options: TrainOptions
    scaling: float  # the VAE's latent scaling factor

    @property
    def latent_size(self) -> int:
        return self.options.resolution // 8

    @property
    def pad(self) -> int:  # latent pixels of crop jitter, each side
        return self.latents[0][0].shape[-1] - self.latent_size

    @property
    def autocast(self) -> bool:
        return self.device.type == "cuda" and self.unet.dtype != torch.float32


def _loop(run: TrainingRun, start: int, losses: list[float], checkpoint, on_progress, should_cancel) -> None:
    """The steps from `start`, in blocks of about a second: the host reads the losses (and hands progress on, looks
    for a cancel) once a block, so the GPU is not made to wait for it every step."""
    options = run.options
    timesteps = run.noise_scheduler.config.num_train_timesteps
    began = time.perf_counter()
    step, block = start, 1  # the first block (one step) measures how long a step takes
    while step < options.steps:
        if should_cancel is not None and should_cancel():
            checkpoint(step)
            raise TrainingCancelled(f"Training stopped at step {step} of {options.steps}; it will resume from there.")
        # A block ends after its steps, at the next checkpoint (which keeps the losses so far) or at the last step.
        end = min(options.steps, step + block, (step // options.checkpoint_every + 1) * options.checkpoint_every)
        block_began = time.perf_counter()
        draws = _draw_block(options, range(step, end), run.latents, run.latent_size, run.pad, timesteps, run.device,
                            run.unet.dtype)
        block_losses = []
        for index in range(end - step):
            try:
                block_losses.append(_step(run, draws, index))
            except Exception as error:  # noqa: BLE001 - only a compiled step is retried, eagerly
                if getattr(run.unet, "_compiled_call_impl", None) is None:
                    raise
                run.optimizer.zero_grad(set_to_none=True)  # nothing of the failed step is kept
                _eager_after_failure(run.unet, error)
                block_losses.append(_step(run, draws, index))
        losses.extend(torch.stack(block_losses).tolist())  # the block's one wait for the GPU
        seconds_a_step = (time.perf_counter() - block_began) / (end - step)
        block = max(1, min(READ_EVERY, int(READ_SECONDS / max(seconds_a_step, 1e-6))))
        step = end
        if on_progress is not None:
            rate = (time.perf_counter() - began) / (step - start)
            on_progress(TrainProgress(step, options.steps, losses[-1], rate * (options.steps - step)))
        if step % options.checkpoint_every == 0 and step < options.steps:
            checkpoint(step)


def _step(run: TrainingRun, draws: StepDraws, index: int) -> torch.Tensor:
    """One step of FaceChain's recipe on the block's `index`-th draws; its loss, left on the device."""
    x, y = draws.crops[index]
    size, scheduler = run.latent_size, run.noise_scheduler
    mean, std = (t[..., y:y + size, x:x + size] for t in run.latents[draws.picks[index]])
    clean = (mean + std * draws.sample_noise[index]) * run.scaling
    noise, t = draws.noise[index], draws.timesteps[index]
    noisy = scheduler.add_noise(clean, noise, t)
    target = scheduler.get_velocity(clean, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    resolution = run.options.resolution
    with torch.autocast(run.device.type, dtype=run.unet.dtype, enabled=run.autocast):
        prediction = run.unet(noisy, t, run.text.hidden_states,
                              **run.text.added_conditions(resolution + 8 * run.pad, (8 * y, 8 * x), resolution)).sample
    loss = F.mse_loss(prediction.float(), target.float())
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.parameters, 1.0)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.lr_schedule.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss.detach()
