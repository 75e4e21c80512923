"""Styled portrait generation: one base pipeline per worker, face and style LoRAs as named adapters.

Adapters are loaded once and kept in a small LRU cache, so switching between users and styles
costs a `set_adapters` call instead of a base-model reload.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.errors import ModelMissing, ModelUnavailable
from engine.generation.depth import DEPTH_CONTROLNET_SETTING, DEPTH_PROBLEM, DEPTH_SCALE
from engine.generation.instant import INSTANT_PROBLEM, InstantAdapter, InstantFace
from engine.generation.instant import LORA_NAME as INSTANT_LORA
from engine.generation.pose_control import CONDITIONING_SCALE, load_controlnet, load_pose_controlnet, pose_size
from engine.generation.pose_drawing import skeleton
from engine.generation.poses import Pose
from engine.generation.style_files import StyleFileCache, StyleFileMissing, file_digest
from engine.models.base_model import BasePipeline, derived_pipeline, diffusers_silenced
from engine.models.references import hub_file, parse_model_reference
from engine.preprocess.trigger import TRIGGER_TOKEN
from engine.styles import Style
from engine.training.files import META_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)
# FaceChain's portrait prompt, minus A1111 weight syntax that diffusers would read as plain text.
PORTRAIT_PROMPT = ("upper_body, raw photo, masterpiece, solo, medium shot, high detail face, photorealistic, "
                   "best quality")
# The NSFW terms always lead, so truncation to the text encoder's 77 tokens never drops them.
NSFW_TERMS = "nsfw, nude, naked"
# For a style built without a catalogue (no family filled in): FaceChain's photo negative.
QUALITY_NEGATIVE = ("paintings, sketches, worst quality, low quality, normal quality, lowres, monochrome, grayscale, "
                    "logo, text, watermark, signature, username, bad anatomy, bad hands, extra fingers, missing "
                    "fingers, extra limbs, deformed, disfigured, blurry, multiple people")
NEGATIVE_PROMPT = f"{NSFW_TERMS}, {QUALITY_NEGATIVE}"
MAX_SEED = 2**31 - 1
UPPER_BODY = re.compile(r"upper[_ ]body( portrait)?")
SOLO = re.compile(r"\bsolo\b")
SEVERAL_PEOPLE = re.compile(r",?\s*\b(multiple people|multiple persons|2girls|2boys|group)\b")
# Adapter names are unique in the process: generators may share one base pipeline.
_adapter_ids = itertools.count()


@dataclass(frozen=True)
class PortraitRequest:
    style: Style
    trigger: str
    face_model: Path | None  # folder of a trained face LoRA; None draws the base model alone
    count: int = 4
    seed: int | None = None  # candidates use seed, seed+1, ...; None picks one at random
    steps: int | None = None  # None: the style's sampler hint
    guidance: float | None = None
    size: int = 512
    # "More like this": start every candidate from the noise of this seed, mixed with a little of
    # its own (spherical interpolation), so they are variations of that picture.
    variation_of: int | None = None
    variation_strength: float = 0.3
    # Fast mode: the LCM-LoRA beside the face and style LoRAs, with the LCM scheduler (give it its
    # few steps and low guidance in `steps` and `guidance`).
    fast: bool = False
    words: str = ""  # the member's own words, added after the style's prompt (checked before)
    # A body pose the OpenPose ControlNet holds the portrait to; it is then drawn 2 wide by 3 high.
    pose: Pose | None = None
    depth: Image.Image | None = None  # with a pose from a photo: its depth, for the depth ControlNet
    # Instant portraits: the member's face as IP-Adapter FaceID reads it (engine.generation.instant), drawn without
    # a face model.
    instant: InstantFace | None = None

    @property
    def width_height(self) -> tuple[int, int]:
        return pose_size(self.size, len(self.pose.people)) if self.pose is not None else (self.size, self.size)


@dataclass
class Candidate:
    image: Image.Image
    seed: int


def build_prompt(trigger: str, style: Style, words: str = "", pose: Pose | None = None) -> str:
    """Trigger, the member's phrase, the style's prompt and the member's own words, then the style's
    frame (its family's, from the catalogue), framed as the pose is when there is one."""
    frame = style.frame or PORTRAIT_PROMPT
    if pose is not None and pose.framing == "full":  # the frames say upper body: the pose shows all of it
        frame = UPPER_BODY.sub("full body", frame).replace("medium shot", "wide shot")
    if pose is not None and len(pose.people) == 2:  # a scene for two members: nobody's face model draws it
        frame = SOLO.sub("two people", frame)
    # No trigger: a scene drawn without a face model (each face is redrawn with its own afterwards).
    parts = [TRIGGER_TOKEN if trigger else "", trigger, style.prompt, words, frame]
    return ", ".join(part for part in parts if part)


def build_negative_prompt(style: Style, people: int = 1) -> str:
    """The NSFW terms first (77-token truncation never drops them), then the style's look (which refuses
    several people, unless the picture is of two)."""
    look = style.negative_frame or QUALITY_NEGATIVE
    if people > 1:
        look = SEVERAL_PEOPLE.sub("", look)
    parts = [NSFW_TERMS, look, style.negative_prompt]
    return ", ".join(part for part in parts if part)


FAST_PROBLEM = "fast-mode LoRA"  # its setup-problem key


def make_scheduler(name: str, config: dict):
    """A scheduler by sampler name (styles.SAMPLERS, or "lcm" for fast mode) from the base model's config."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LCMScheduler,
        UniPCMultistepScheduler,
    )

    makers = {
        "dpmpp_2m_karras": lambda: DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
        "dpmpp_2m": lambda: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++",
                                                                    solver_order=2),
        "euler_a": lambda: EulerAncestralDiscreteScheduler.from_config(config),
        "euler": lambda: EulerDiscreteScheduler.from_config(config),
        "ddim": lambda: DDIMScheduler.from_config(config),
        "unipc": lambda: UniPCMultistepScheduler.from_config(config),
        "lcm": lambda: LCMScheduler.from_config(config),
    }
    return makers[name]()


def lora_file(reference: str, weight_name: str | None, setting: str, revision: str | None = None) -> Path:
    """The one .safetensors file a LoRA reference names: a file, a file in a folder, or one hub file."""
    parsed = parse_model_reference(reference)
    if parsed.kind == "local":
        path = Path(parsed.value).expanduser()
        path = path / (weight_name or WEIGHTS_FILE) if path.is_dir() else path
        if not path.is_file():
            raise ModelUnavailable(f"{setting}: {path} does not exist: download the LoRA there, or fix the reference.")
        return path
    return hub_file(parsed, weight_name or WEIGHTS_FILE, setting, revision)


class StyleUnavailable(ModelMissing):
    """A style's LoRA cannot be loaded: the job fails at once (no retry) with words for the member;
    the owner's detail is in `detail`."""

    def __init__(self, style: Style, detail: str) -> None:
        super().__init__(f"The {style.name} style can't be drawn right now: its style model is missing or "
                         "damaged, and the bot's owner has been told. Try another style.")
        self.detail = detail


class PortraitGenerator:
    def __init__(self, base: BasePipeline, max_adapters: int = 8, fast_lora: str = "",
                 pose_controlnet: str = "", depth_controlnet: str = "", style_cache: StyleFileCache | None = None,
                 instant_adapter: Callable[[], Path] | None = None) -> None:
        self.base = base
        # On a cluster's GPU machine: the style files it was sent (it shares no disk with the store).
        self.style_cache = style_cache
        self.max_adapters = max_adapters
        self.fast_lora = fast_lora  # the LCM-LoRA reference for the base's family (FACECHAIN_FAST_LORA...)
        self.pose_controlnet = pose_controlnet  # FACECHAIN_POSE_CONTROLNET, loaded at the first pose
        self.depth_controlnet = depth_controlnet  # FACECHAIN_DEPTH_CONTROLNET, loaded at the first depth
        self._controlnets: dict[str, object] = {}
        self._derived: dict[str, object] = {}  # pipeline class name -> a pipeline on the base's models
        self._adapters: OrderedDict[str, str] = OrderedDict()  # source key -> adapter name
        self._schedulers: dict[str, object] = {}
        self.instant_adapter = instant_adapter  # where instant portraits' adapter is (None: the mode is off)
        self._instant: InstantAdapter | None = None

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def _adapter(self, key: str, load: Callable[[str], None]) -> str:
        if key in self._adapters:
            self._adapters.move_to_end(key)
            return self._adapters[key]
        while len(self._adapters) >= self.max_adapters:
            _, evicted = self._adapters.popitem(last=False)
            self.base.pipeline.delete_adapters(evicted)
        name = f"adapter_{next(_adapter_ids)}"
        with warnings.catch_warnings():  # several adapters on one UNet is the point of this cache
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            load(name)
        self._adapters[key] = name
        return name

    def forget_adapter(self, key: str) -> None:
        """Unload a face model that was retrained or deleted."""
        name = self._adapters.pop(str(key), None)
        if name is not None:
            self.base.pipeline.delete_adapters(name)

    def _face_adapter(self, folder: Path) -> str:
        if not (folder / WEIGHTS_FILE).is_file():
            raise ModelMissing(f"The face model at {folder} has no {WEIGHTS_FILE}: train it again.")
        if trained_for(folder) != self.base.family.name:  # an SD1.5 LoRA does not fit SDXL, nor the reverse
            raise ModelMissing("This face model was made for another image model than the one this bot draws "
                               "with now: it is rebuilt from the enrolled selfies at the next request.")

        def load(name: str) -> None:
            try:
                with diffusers_silenced():
                    self.base.pipeline.load_lora_weights(folder, weight_name=WEIGHTS_FILE, adapter_name=name)
            except Exception as error:  # noqa: BLE001 - a truncated or garbled file fails in many ways
                self._discard_partial(name)
                raise ModelMissing(f"The face model file is damaged ({type(error).__name__}): enroll again to "
                                   "retrain it, or run `facechain train` for this user.") from None
        return self._adapter(str(folder), load)

    def _discard_partial(self, name: str) -> None:
        """Remove what a failed load may have left on the UNet under `name`."""
        try:
            self.base.pipeline.delete_adapters(name)
        except (ValueError, KeyError):
            pass

    def _file_adapter(self, key: str, path_of: Callable[[], Path]) -> str:
        def load(name: str) -> None:
            path = path_of()
            try:
                self.base.pipeline.load_lora_weights(path.parent, weight_name=path.name, adapter_name=name)
            except Exception:
                self._discard_partial(name)
                raise
        return self._adapter(key, load)

    def _style_adapter(self, style: Style) -> str:
        """A style's LoRA, cached by what it is: a hub file by its reference and revision, a file where the
        store is (a server's or the owner's style) by its content, so a style removed and added again under
        the same id draws with the new file, in every worker and actor."""
        lora = style.lora
        try:
            if lora.digest is not None:
                return self._file_adapter(f"style:sha256:{lora.digest}", lambda: self._style_file(style))
            key = f"style:{lora.reference}:{lora.weight_name}:{lora.revision}"
            if parse_model_reference(lora.reference).kind == "local":
                key = f"style:sha256:{file_digest(lora_file(lora.reference, lora.weight_name, style.lora_setting))}"
            return self._file_adapter(
                key, lambda: lora_file(lora.reference, lora.weight_name, style.lora_setting, lora.revision))
        except StyleFileMissing:
            raise  # the dispatcher sends the file and runs the job again
        except Exception as error:  # noqa: BLE001 - a missing, unreachable or garbled LoRA says the same
            detail = str(error) if isinstance(error, ModelMissing) else f"{type(error).__name__}: {str(error)[:200]}"
            raise StyleUnavailable(style, f"style {style.id}: its LoRA {lora.reference} could not be loaded "
                                          f"({detail}); `facechain styles check` validates it.") from None

    def _style_file(self, style: Style) -> Path:
        """Where the store is, the style's own file; on a cluster's GPU machine, the copy it was sent."""
        lora = style.lora
        if self.style_cache is not None:
            return self.style_cache.path(lora.digest, lora.reference, lora.weight_name)
        return lora_file(lora.reference, lora.weight_name, style.lora_setting)

    def _fast_adapter(self) -> str:
        setting = self.base.family.fast_setting
        if not self.fast_lora.strip():
            raise ModelUnavailable(f"Fast mode was asked for but {setting} is empty: set it to the "
                                   f"{self.base.family.label} LCM-LoRA (or a local copy).", FAST_PROBLEM)
        try:
            return self._file_adapter(f"fast:{self.fast_lora}", lambda: lora_file(self.fast_lora, None, setting))
        except ModelUnavailable as error:
            raise ModelUnavailable(str(error), FAST_PROBLEM) from None
        except Exception as error:  # noqa: BLE001
            raise ModelUnavailable(f"The fast-mode LoRA {self.fast_lora} could not be loaded ({type(error).__name__}):"
                                   f" re-download it or fix {setting}.", FAST_PROBLEM) from None

    def _activate(self, request: PortraitRequest) -> None:
        names, weights = [], []
        if request.face_model is not None:
            names.append(self._face_adapter(request.face_model))
            weights.append(request.style.face_weight)
        if request.style.lora is not None and request.style.lora.fits(self.base.family.name):
            names.append(self._style_adapter(request.style))
            weights.append(request.style.lora.weight)
        if request.fast:
            names.append(self._fast_adapter())
            weights.append(1.0)
        if request.instant is not None:
            self._instant_adapter()
            names.append(INSTANT_LORA)
            weights.append(1.0)
        pipeline = self.base.pipeline
        if names:
            pipeline.enable_lora()
            pipeline.set_adapters(names, adapter_weights=weights)
        elif self._adapters or self._instant is not None:
            pipeline.disable_lora()
        sampler = "lcm" if request.fast else request.style.sampler.name
        if sampler not in self._schedulers:
            self._schedulers[sampler] = make_scheduler(sampler, self.base.scheduler_config
                                                       or dict(pipeline.scheduler.config))
        pipeline.scheduler = self._schedulers[sampler]

    def generate(self, request: PortraitRequest, on_step: Callable[[int, int], None] | None = None) -> list[Candidate]:
        import torch

        self._activate(request)
        first_seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED - request.count)
        seeds = [first_seed + index for index in range(request.count)]
        steps = request.steps or request.style.sampler.steps
        width, height = request.width_height
        callback = None
        if on_step is not None:
            def callback(pipe, step, timestep, kwargs):
                on_step(step + 1, steps)
                return kwargs
        guidance = request.guidance if request.guidance is not None else request.style.sampler.guidance
        drawing = self.drawing_with(self._pipeline_for(request))
        with drawing as pipeline, self._instant_drawing(request, guidance) as extra:
            images = pipeline(
                prompt=[build_prompt(request.trigger, request.style, request.words, request.pose)] * request.count,
                negative_prompt=[build_negative_prompt(request.style, people(request))] * request.count,
                num_inference_steps=steps,
                guidance_scale=guidance, height=height, width=width,
                # One CPU generator per image: a seed gives the same picture alone or in a batch (to float rounding).
                generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                latents=self._variation_latents(request, seeds),
                callback_on_step_end=callback,
                **control_images(request, width, height), **extra,
            ).images
        return [Candidate(image, seed) for image, seed in zip(images, seeds)]

    def _instant_adapter(self) -> InstantAdapter:
        if self.instant_adapter is None:
            raise ModelUnavailable("An instant portrait was asked for but instant portraits are off "
                                   "(FACECHAIN_INSTANT).", INSTANT_PROBLEM)
        if self._instant is None:
            self._instant = InstantAdapter(self.base.pipeline, self.instant_adapter())
        return self._instant

    def _instant_drawing(self, request: PortraitRequest, guidance: float):
        """The instant adapter in place for this request (and put aside after), or nothing to add."""
        if request.instant is None:
            return nullcontext({})
        return self._instant_adapter().drawing(request.instant, request.count, guided=guidance > 1)

    def derived_pipeline(self, pipeline_class, key: str | None = None,
                         components: Callable[[], dict] = dict):
        """A pipeline of another kind (ControlNet, inpainting) on the base pipeline's own models, made
        once per `key` (default: the class's name): `from_pipe` shares the UNet, VAE and text encoder,
        the adapters loaded on them included. `components` makes what it adds (a ControlNet)."""
        key = key or pipeline_class.__name__
        if key not in self._derived:
            self._derived[key] = derived_pipeline(self.base, pipeline_class, **components())
        return self._derived[key]

    @contextmanager
    def drawing_with(self, pipeline) -> Iterator[object]:
        """`pipeline` (the base one or a derived one) ready to draw: the request's sampler, and under
        model offload the offload hooks, which belong to one pipeline, moved to it and back after."""
        base = self.base
        if pipeline is base.pipeline:
            yield pipeline
            return
        pipeline.scheduler = base.pipeline.scheduler  # the request's sampler, set by _activate
        if not base.plan.cpu_offload:
            if getattr(pipeline, "controlnet", None) is not None:
                pipeline.controlnet.to(base.device)  # a no-op unless it was made under offload
            yield pipeline
            return
        pipeline.enable_model_cpu_offload(device=base.device)
        try:
            yield pipeline
        finally:
            base.pipeline.enable_model_cpu_offload(device=base.device)

    def _pipeline_for(self, request: PortraitRequest):
        """The base pipeline, or for a pose a ControlNet pipeline on the same models (made at the first
        pose; with depth, a second one holding both ControlNets)."""
        if request.pose is None:
            return self.base.pipeline
        from diffusers import StableDiffusionControlNetPipeline

        if request.depth is None:
            return self.derived_pipeline(StableDiffusionControlNetPipeline,
                                         components=lambda: {"controlnet": self._controlnet("pose")})
        from diffusers import MultiControlNetModel

        return self.derived_pipeline(StableDiffusionControlNetPipeline, "pose and depth", lambda: {
            "controlnet": MultiControlNetModel([self._controlnet("pose"), self._controlnet("depth")])})

    def _controlnet(self, which: str):
        """The pose or the depth ControlNet, loaded once (both pipelines that use one share it)."""
        if which not in self._controlnets:
            self._controlnets[which] = load_pose_controlnet(self.pose_controlnet, self.base) if which == "pose" \
                else load_controlnet(self.depth_controlnet, self.base, DEPTH_CONTROLNET_SETTING, DEPTH_PROBLEM, "depth")
        return self._controlnets[which]

    def _variation_latents(self, request: PortraitRequest, seeds: list[int]):
        """Starting noise near `request.variation_of`'s, or None for the pipeline's own."""
        if request.variation_of is None:
            return None
        import torch

        pipeline = self.base.pipeline
        width, height = request.width_height
        shape = (pipeline.unet.config.in_channels, height // pipeline.vae_scale_factor,
                 width // pipeline.vae_scale_factor)

        def noise(seed: int):
            return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

        anchor = noise(request.variation_of)
        latents = torch.stack([slerp(request.variation_strength, anchor, noise(seed)) for seed in seeds])
        return latents.to(self.base.device, pipeline.unet.dtype)


def trained_for(face_model: Path) -> str:
    """The base model family a face model was trained on (its meta.json; older ones are SD1.5's)."""
    try:
        return json.loads((face_model / META_FILE).read_text()).get("family", "sd15")
    except (OSError, ValueError):
        return "sd15"


def people(request: PortraitRequest) -> int:
    return len(request.pose.people) if request.pose is not None else 1


def control_images(request: PortraitRequest, width: int, height: int) -> dict:
    """The ControlNet pipeline's condition arguments for a request in a pose (none without one): the
    skeleton, and with depth the depth map at half strength beside it, as FaceChain conditions them."""
    if request.pose is None:
        return {}
    pose = skeleton(request.pose, (width, height))
    if request.depth is None:
        return {"image": pose, "controlnet_conditioning_scale": CONDITIONING_SCALE}
    return {"image": [pose, request.depth.resize((width, height))],
            "controlnet_conditioning_scale": [CONDITIONING_SCALE, DEPTH_SCALE]}


def slerp(t: float, start, end):
    """Spherical interpolation between two noise tensors: the mix keeps the norm Gaussian noise has."""
    import torch

    start_flat, end_flat = start.flatten(), end.flatten()
    cosine = torch.dot(start_flat / start_flat.norm(), end_flat / end_flat.norm()).clamp(-1, 1)
    angle = torch.acos(cosine)
    if angle.abs() < 1e-4:
        return (1 - t) * start + t * end
    return (torch.sin((1 - t) * angle) * start + torch.sin(t * angle) * end) / torch.sin(angle)

