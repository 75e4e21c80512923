"""Random-weight Stable Diffusion 1.5-shaped pipelines the project writes itself (no hub needed).

- `make_tiny_model`: a few MB, same component types and layout as SD1.5 (tokenizer, CLIP text
  encoder, UNet, VAE with an 8x downscale, DPM-Solver scheduler). Tests and CI use it.
- `make_sd15_shaped_model`: the real SD1.5 architecture at full size, so GPU benchmarks see
  the real FLOPs and memory.

Both are saved with `save_pretrained` and loaded back through the production loader. Their
pictures are noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# A character-level vocabulary: every prompt tokenizes, with no merges to ship.
SYMBOLS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("<>,()[]:_-.'!?/&+")


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in SYMBOLS:
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


def _tokenizer():
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = write_tokenizer_files(Path(scratch))
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def _save(folder: Path, tokenizer, text_encoder, unet, vae) -> Path:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = Path(folder)
    pipeline.save_pretrained(folder)
    return folder


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.base_model import quiet_loaders

    quiet_loaders()
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
        layers_per_block=1,
    )
    return _save(folder, tokenizer, text_encoder, unet, vae)


def make_sd15_shaped_model(folder: Path, seed: int = 0, half: bool = True) -> Path:
    """Stable Diffusion 1.5's architecture and sizes (860M-parameter UNet) with random weights, made in
    fp16 when `half` (and saved so)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def parts():
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280))
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
        )
        return text_encoder, unet, vae

    text_encoder, unet, vae = made_with_random_weights(parts, torch.float16 if half else torch.float32, seed)
    return _save(folder, _tokenizer(), text_encoder, unet, vae)


# Normal draws every weight matrix takes a window of: drawing billions of numbers one by one takes
# longer than writing them to disk, and a shape-and-format contract needs no more randomness than this.
RANDOM_POOL_SIZE = 1 << 24


def made_with_random_weights(make_parts, dtype, seed: int = 0) -> tuple:
    """The modules `make_parts()` returns, built without weights and then given small random ones in
    `dtype` (so a full-size model is never drawn twice, nor held in fp32 to be saved in fp16): each
    matrix is a window of one pool of N(0, 0.02) draws at a seeded offset; norms' scales are 1 and
    biases 0, so nothing overflows in fp16."""
    import torch
    from accelerate import init_empty_weights

    from engine.models.base_model import quiet_loaders

    quiet_loaders()
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with init_empty_weights():  # no weights drawn twice: the modules' own initialisation is skipped
            parts = make_parts()
    finally:
        torch.set_default_dtype(default)
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(RANDOM_POOL_SIZE, generator=generator).mul_(0.02).to(dtype)
    with torch.no_grad():
        for part in parts:
            part.to_empty(device="cpu")
            for name, weight in part.named_parameters():
                if weight.dim() > 1:
                    _fill_from(weight.view(-1), pool, generator)
                else:
                    weight.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    return parts


def _fill_from(flat, pool, generator) -> None:
    import torch

    for start in range(0, flat.numel(), len(pool)):  # most matrices fit in one window
        window = flat[start:start + len(pool)]
        offset = int(torch.randint(0, len(pool) - window.numel() + 1, (1,), generator=generator))
        window.copy_(pool[offset:offset + window.numel()])


CONDITIONING_GAIN = 4.0


def make_random_controlnet(folder: Path, base_model: Path, seed: int = 0) -> Path:
    """A ControlNet shaped after `base_model`'s UNet (as `ControlNetModel.from_unet` makes one), saved
    like a published one. Its zero convolutions get random weights too (a ControlNet fresh from
    `from_unet` adds nothing to the UNet), and its conditioning embedding is made several times more
    sensitive than a default initialisation, which averages a thin skeleton on black away: tests must
    see one pose draw another picture than the next."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(base_model) / "unet")
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet)
    zero_convolutions = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                         controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for convolution in zero_convolutions:
            convolution.weight.normal_(0.0, 0.05)
        for weight in controlnet.controlnet_cond_embedding.parameters():
            weight.mul_(CONDITIONING_GAIN)
    folder = Path(folder)
    controlnet.to(unet.dtype).save_pretrained(folder)
    return folder


def make_tiny_safety_checker(folder: Path, flags_everything: bool, seed: int = 0) -> Path:
    """A tiny random StableDiffusionSafetyChecker with its image processor, saved like the real one.

    Its concept thresholds are set so that it flags every image (or none), which lets tests drive
    the whole safety path through the real model class."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config)
    # A concept fires when cosine similarity - threshold > 0; cosines lie in [-1, 1].
    with torch.no_grad():
        threshold = -10.0 if flags_everything else 10.0
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    folder = Path(folder)
    checker.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# jonathandinu/face-parsing's classes (CelebAMask-HQ), in its order.
FACE_PARSER_CLASSES = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                       "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")


def make_tiny_face_parser(folder: Path, seed: int = 0, sees_only: str | None = None) -> Path:
    """A tiny random SegFormer face parser with its image processor, saved as jonathandinu/face-parsing is
    (config.json with CelebAMask-HQ's classes, model.safetensors, preprocessor_config.json). With
    `sees_only`, its classifier's bias makes every pixel that class (to drive the mask logic in tests)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    labels = dict(enumerate(FACE_PARSER_CLASSES))
    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=32, id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )
    model = SegformerForSemanticSegmentation(config)
    if sees_only is not None:
        with torch.no_grad():
            model.decode_head.classifier.weight.zero_()
            model.decode_head.classifier.bias.fill_(-10.0)
            model.decode_head.classifier.bias[FACE_PARSER_CLASSES.index(sees_only)] = 10.0
    folder = Path(folder)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 128, "width": 128}).save_pretrained(folder)
    return folder


def make_random_lora(unet, path: Path, rank: int = 4, kohya: bool = False, seed: int = 0,
                     targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> Path:
    """A LoRA file with random weights of the right shapes for `unet`'s attention projections: in
    diffusers' format (`unet.<module>.lora_A.weight`), or in kohya's (`lora_unet_<module>.lora_down.weight`
    and `.alpha`, as style LoRAs and the LCM-LoRA are published). It stands in for a downloaded one."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        module = getattr(module, "base_layer", module)  # a layer peft has wrapped (adapters loaded before)
        if not isinstance(module, torch.nn.Linear) or not name.endswith(targets):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) * 0.01
        up = torch.randn(module.out_features, rank, generator=generator) * 0.01
        if kohya:
            key = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(float(rank))}
        else:
            tensors |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def make_tiny_depth_estimator(folder: Path, seed: int = 0) -> Path:
    """A tiny random DPT depth model with its image processor, saved as Intel/dpt-hybrid-midas is."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    model = DPTForDepthEstimation(DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8,
        neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3]))
    folder = Path(folder)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def make_tiny_pose_detector(folder: Path, person: tuple[float, float, float, float] | None = (220, 60, 420, 600),
                            points: dict[str, tuple[float, float]] | None = None) -> Path:
    """DWPose's two ONNX files with their real inputs and outputs (YOLOX: 1x3x640x640 -> 1x8400x85;
    RTMPose: 1x3x384x288 -> SimCC 1x133x576 and 1x133x768) whose answers are fixed, as the tiny
    insightface pack's gender-age model is: the detector finds one person at `person` (x1, y1, x2, y2 in
    its 640 px letterboxed input; None: nobody) and the keypoint model puts the body points at `points`
    (x, y as shares of its 288x384 crop; by default a person standing with raised arms). Loading,
    letterboxing, the crop's warp and SimCC decoding are what they test; the answers mean nothing."""
    import torch

    from engine.generation.body_pose import COCO_BODY, DETECTOR_FILE, KEYPOINTS_FILE, STRIDES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    detections = torch.zeros(1, sum((640 // s) ** 2 for s in STRIDES), 85)
    if person is not None:
        x1, y1, x2, y2 = person
        stride, cells = STRIDES[-1], 640 // STRIDES[-1]
        centre_x, centre_y = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        anchor = sum((640 // s) ** 2 for s in STRIDES[:-1]) + int(centre_y) * cells + int(centre_x)
        detections[0, anchor, :6] = torch.tensor([centre_x - int(centre_x), centre_y - int(centre_y),
                                                  math.log((x2 - x1) / stride), math.log((y2 - y1) / stride), 0.95, 0.95])
    points = points or DEFAULT_BODY
    simcc_x, simcc_y = torch.zeros(1, 133, 576), torch.zeros(1, 133, 768)
    for index, name in enumerate(COCO_BODY):
        if name in points:
            x, y = points[name]
            simcc_x[0, index, round(x * 575)] = simcc_y[0, index, round(y * 767)] = 0.9

    class Fixed(torch.nn.Module):
        def __init__(self, *answers):
            super().__init__()
            self.answers = torch.nn.ParameterList([torch.nn.Parameter(a, requires_grad=False) for a in answers])

        def forward(self, x):
            anchor = x.mean() * 0  # the input stays part of the graph, as a real model's is
            return tuple(answer + anchor for answer in self.answers)

    for module, size, path, outputs in ((Fixed(detections), (640, 640), DETECTOR_FILE, ["output"]),
                                        (Fixed(simcc_x, simcc_y), (384, 288), KEYPOINTS_FILE, ["simcc_x", "simcc_y"])):
        torch.onnx.export(module, torch.zeros(1, 3, *size), str(folder / path), input_names=["input"],
                          output_names=outputs, dynamo=False)
    return folder


# A standing person with the arms out, as shares of RTMPose's 288x384 crop (COCO names).
DEFAULT_BODY = {"nose": (0.5, 0.16), "left_eye": (0.53, 0.14), "right_eye": (0.47, 0.14), "left_ear": (0.56, 0.15),
                "right_ear": (0.44, 0.15), "left_shoulder": (0.62, 0.26), "right_shoulder": (0.38, 0.26),
                "left_elbow": (0.75, 0.3), "right_elbow": (0.25, 0.3), "left_wrist": (0.86, 0.24),
                "right_wrist": (0.14, 0.24), "left_hip": (0.57, 0.55), "right_hip": (0.43, 0.55),
                "left_knee": (0.58, 0.72), "right_knee": (0.42, 0.72), "left_ankle": (0.58, 0.88),
                "right_ankle": (0.42, 0.88)}


def make_random_rrdb(path: Path, features: int = 8, blocks: int = 1, growth: int = 4, scale: int = 4, seed: int = 0,
                     passthrough: bool = False) -> Path:
    """A Real-ESRGAN RRDB `.pth` (BasicSR's names, under `params_ema`, as RealESRGAN_x4plus.pth is published) with
    random weights; the defaults are a small one, `RRDBNet()`'s full size is 64 features, 23 blocks, growth 32. With
    `passthrough` (x4 only) the residual path is zero and the rest copies the picture: a nearest-neighbour x4, so
    tests can measure faces on what it makes."""
    import torch

    from engine.postprocess.super_resolution import RRDBNet

    torch.manual_seed(seed)
    network = RRDBNet(scale, features, blocks, growth)
    if passthrough:
        with torch.no_grad():
            for conv in (network.conv_first, network.conv_body, network.conv_up1, network.conv_up2, network.conv_hr,
                         network.conv_last):
                conv.weight.zero_()
                conv.bias.zero_()
                if conv is not network.conv_body:  # the body's sum is cut: the picture goes straight through
                    for channel in range(min(conv.in_channels, conv.out_channels)):
                        conv.weight[channel, channel, 1, 1] = 1.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": network.state_dict()}, path)
    return path
