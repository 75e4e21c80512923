"""Your face redrawn into a photo you bring, with your face model (FaceChain's inpaint mode).

The classical swap (`swap.py`) pastes an enrolled selfie: quick, but it keeps the selfie's
expression and light. Here the chosen face's region of the photo is drawn again by Stable Diffusion
with the member's face LoRA: the region is cropped square around the face, noised to
`REDRAW_STRENGTH` and denoised inside a face-shaped mask (the inpainting pipeline on the base
model's own weights, so the rest of the crop anchors light, angle and expression), the enrolled face
is fused on as for portraits, and the crop is pasted back through a feathered mask. Outside that
mask the photo keeps every pixel it had. Several seeds are drawn and ranked by likeness.

FaceChain holds the redrawn region with an openpose and a canny ControlNet; here the photo's own
pixels (the 35% of the signal that strength 0.65 keeps) hold it, and no second or third ControlNet
has to be downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image

from engine.faces import Face, FaceAnalyzer
from engine.generation.generate import (
    Candidate,
    PortraitGenerator,
    PortraitRequest,
    build_negative_prompt,
    build_prompt,
)
from engine.postprocess import EnrolledFace, RankedPortrait, make_fuser, rank_candidates
from engine.postprocess.rank import central_face
from engine.styles import Sampler, Style

REDRAW_STRENGTH = 0.65
REDRAW_CANDIDATES = 4
PASTED_NOTICE = ("Your face model's redrawing didn't look enough like you on this photo, so your enrolled selfie's "
                 "face was put on instead.")
# The square redrawn around the face, in face widths: the face, the hair and some of the neck.
REGION_FACES = 2.2
# The mask: an ellipse over the face box, grown to take the forehead and the jaw line.
MASK_WIDTH, MASK_HEIGHT, MASK_RISE = 0.62, 0.78, 0.08
FEATHER = 0.08  # of the face's width
# The words of a redrawn face: the photo decides the scene, the prompt only the face's rendering.
REDRAW_STYLE = Style(id="redraw", name="Your photo", description="the face redrawn in the photo's own light",
                     prompt="a photo, natural light, detailed skin",
                     frame="close-up, raw photo, high detail face, photorealistic, best quality",
                     sampler=Sampler(name="dpmpp_2m_karras", steps=30, guidance=6.0), face_weight=0.9)


@dataclass(frozen=True)
class Region:
    """The square of the photo that is redrawn: left, top and side in photo pixels."""

    left: int
    top: int
    side: int

    def of(self, image: np.ndarray) -> np.ndarray:
        return image[self.top:self.top + self.side, self.left:self.left + self.side]


def face_region(face: Face, image_shape: tuple[int, ...]) -> Region:
    """A square about REGION_FACES face widths wide, centred a little above the face (for the hair),
    kept inside the photo."""
    height, width = image_shape[:2]
    x, y, w, h = face.box
    side = int(min(max(w, h) * REGION_FACES, width, height))
    centre_x, centre_y = x + w / 2, y + h / 2 - 0.1 * h
    left = int(np.clip(round(centre_x - side / 2), 0, width - side))
    top = int(np.clip(round(centre_y - side / 2), 0, height - side))
    return Region(left, top, side)


def face_extent(face: Face) -> tuple[float, float, float, float]:
    """x, y, width, height of the face itself: from the 68 landmarks (jaw, brows and chin) where the
    backend gives them, since a turned face's detector box sits off the face; else the box."""
    if len(face.landmarks) < 68:
        return tuple(float(v) for v in face.box)
    outline = face.landmarks[:27]  # the jaw line and the brows
    left, top = outline.min(axis=0)
    right, bottom = outline.max(axis=0)
    return float(left), float(top), float(right - left), float(bottom - top)


def face_mask(face: Face, region: Region, size: int, feathered: bool) -> np.ndarray:
    """The face's ellipse in the region scaled to `size` px, 0-1; `feathered` softens its edge (for the
    paste back), else it is the hard mask the inpainting redraws inside."""
    scale = size / region.side
    x, y, w, h = face_extent(face)
    centre = (round((x + w / 2 - region.left) * scale), round((y + h / 2 - MASK_RISE * h - region.top) * scale))
    axes = (max(1, round(MASK_WIDTH * w * scale)), max(1, round(MASK_HEIGHT * h * scale)))
    mask = np.zeros((size, size), np.float32)
    if not feathered:
        return cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, thickness=-1)
    # Soft edge inside the ellipse: a smaller one, blurred, has faded to ~0 by the hard mask's edge.
    sigma = max(0.5, FEATHER * w * scale)
    inner = (max(1, round(axes[0] - 2.5 * sigma)), max(1, round(axes[1] - 2.5 * sigma)))
    cv2.ellipse(mask, centre, inner, 0, 0, 360, 1.0, thickness=-1)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def paste_weight(face: Face, region: Region) -> np.ndarray:
    """The feathered mask at the region's full size; below 1/1000 it is exactly 0 (the photo's own)."""
    weight = face_mask(face, region, region.side, feathered=True)
    weight[weight < 1e-3] = 0.0
    return weight


def paste_back(image: np.ndarray, region: Region, drawn: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`drawn` (the region redrawn, any size) blended into a copy of `image` through `weight` (the
    region's `paste_weight`): where it is 0 the photo is left exactly as it was."""
    side = region.side
    drawn = cv2.resize(drawn, (side, side), interpolation=cv2.INTER_AREA if drawn.shape[0] > side
                       else cv2.INTER_CUBIC)
    result = image.copy()
    inside = weight > 0
    share = weight[inside][:, None]
    blended = region.of(image)[inside] * (1 - share) + drawn[inside] * share
    region.of(result)[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result


def redraw_face(generator: PortraitGenerator, analyzer: FaceAnalyzer, settings, enrolled: EnrolledFace,
                image: np.ndarray, face: Face, face_model, trigger: str, seed: int, count: int = REDRAW_CANDIDATES,
                on_step=None) -> list[RankedPortrait]:
    """`face` of `image` redrawn with the face model in `face_model` (a folder), `count` seeds from
    `seed`, fused and ranked best first; each result is the whole photo. When no redrawing reads as the
    member better than their enrolled face pasted on does, that paste alone (marked `pasted`)."""
    region = face_region(face, image.shape)
    drawn = draw_region(generator, image, face, region, settings.portrait_size, face_model, trigger,
                        [seed + index for index in range(count)], on_step)
    ranked = ranked_drawings(analyzer, settings, enrolled, drawn)
    return pasted_back(image, face, region, or_pasted(analyzer, settings, enrolled, image, region, ranked))


def or_pasted(analyzer: FaceAnalyzer, settings, enrolled: EnrolledFace, image: np.ndarray, region: Region,
              drawings: list[RankedPortrait]) -> list[RankedPortrait]:
    """`drawings` of a region (ranked), or, when the best of them reads as the member less than the region with
    the enrolled face fused on (the classical swap's paste), that paste alone, marked `pasted`. A face model can
    fail on a photo (undertrained, an odd angle); the member then gets their own face, not a stranger's."""
    as_it_is = Candidate(Image.fromarray(np.ascontiguousarray(region.of(image))), drawings[0].seed)
    paste = ranked_drawings(analyzer, settings, enrolled, [as_it_is])[0]
    best = drawings[0].similarity
    if paste.similarity is None or (best is not None and best >= paste.similarity):
        return drawings
    return [replace(paste, pasted=(0,))]


def draw_region(generator: PortraitGenerator, image: np.ndarray, face: Face, region: Region, size: int, face_model,
                trigger: str, seeds: list[int], on_step=None, steps: int | None = None,
                style: Style = REDRAW_STYLE) -> list[Candidate]:
    """The region, `size` px square, redrawn inside the face's mask once per seed in `style`'s words (and
    LoRA), `steps` the sampler's schedule, of which the last REDRAW_STRENGTH share is drawn (default the
    style's). Without a `face_model`, the region as it is, once per seed (for the enrolled face's paste)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    if face_model is None:  # at the photo's own resolution: the enrolled face is pasted, not drawn
        return [Candidate(Image.fromarray(np.ascontiguousarray(region.of(image))), seed) for seed in seeds]
    crop = Image.fromarray(np.ascontiguousarray(region.of(image))).resize((size, size), Image.Resampling.LANCZOS)
    mask = Image.fromarray((face_mask(face, region, size, feathered=False) * 255).astype(np.uint8))
    generator._activate(PortraitRequest(style=style, trigger=trigger, face_model=face_model, size=size))
    steps = steps or style.sampler.steps
    callback = None
    if on_step is not None:
        drawn_steps = max(1, int(steps * REDRAW_STRENGTH))

        def callback(pipe, step, timestep, kwargs):
            on_step(step + 1, drawn_steps)
            return kwargs
    inpaint = generator.derived_pipeline(StableDiffusionInpaintPipeline)
    with generator.drawing_with(inpaint):
        drawn = inpaint(prompt=[build_prompt(trigger, style)] * len(seeds),
                        negative_prompt=[build_negative_prompt(style)] * len(seeds),
                        image=crop, mask_image=mask, strength=REDRAW_STRENGTH, num_inference_steps=steps,
                        guidance_scale=style.sampler.guidance, height=size, width=size,
                        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                        callback_on_step_end=callback).images
    return [Candidate(picture, seed) for picture, seed in zip(drawn, seeds)]


def compose(analyzer: FaceAnalyzer, settings, enrolled: EnrolledFace, image: np.ndarray, face: Face, region: Region,
            drawn: list[Candidate]) -> list[RankedPortrait]:
    """The redrawn regions fused with the enrolled face, ranked by likeness (unranked when none shows a
    clear face) and each pasted back into the whole photo."""
    return pasted_back(image, face, region, ranked_drawings(analyzer, settings, enrolled, drawn))


def pasted_back(image: np.ndarray, face: Face, region: Region, ranked: list[RankedPortrait]) -> list[RankedPortrait]:
    """Each drawing of the region pasted back into the whole photo through the face's feathered mask."""
    weight = paste_weight(face, region)
    return [replace(r, image=Image.fromarray(paste_back(image, region, np.asarray(r.image.convert("RGB")), weight)))
            for r in ranked]


def ranked_drawings(analyzer: FaceAnalyzer, settings, enrolled: EnrolledFace,
                    drawn: list[Candidate]) -> list[RankedPortrait]:
    """Drawings of a region, each with the enrolled face fused on the face at its centre, best first; as
    drawn and unranked when none shows a clear face."""
    ranked = rank_candidates(analyzer, drawn, enrolled, make_fuser(settings, analyzer),
                             pick=lambda image: central_face(analyzer, image))
    return ranked or [RankedPortrait(candidate.image, candidate.seed, None) for candidate in drawn]
