"""Settings from the environment and `.env`, all prefixed `FACECHAIN_`.

Every field here is listed, with a comment, in `.env.example`; a test keeps the two in sync.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.errors import SettingsError

ENV_PREFIX = "FACECHAIN_"
DEFAULT_BASE_MODEL = "SG161222/Realistic_Vision_V5.1_noVAE"
# The VAE the default base model's card asks for.
DEFAULT_BASE_VAE = "stabilityai/sd-vae-ft-mse"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where the database, selfies, face models and portraits live.
    data_dir: Path = Path("./data")
    # Discord bot token (Developer Portal -> your app -> Bot -> Reset Token).
    discord_token: SecretStr | None = None
    # Guild (server) id to sync slash commands to instantly while developing; empty = global sync.
    dev_guild_id: int | None = None
    # Start the worker (training, portraits) as a child of the bot; false = run `facechain worker` yourself.
    bot_runs_worker: bool = True
    # Hosts the bot downloads enrolled photos from over https, comma-separated (Discord's CDN); an
    # entry written http://host:port is trusted as written (a local proxy).
    attachment_hosts: str = "cdn.discordapp.com,media.discordapp.net"

    # The base model: a Stable Diffusion 1.5 or an SDXL model (read from its model_index.json), as a local
    # folder, a Hugging Face id, or `modelscope:<id>`. Members' face models are retrained after a switch.
    base_model: str = DEFAULT_BASE_MODEL
    # Separate VAE passed to the base pipeline: a local folder, a Hugging Face id or modelscope:<id>;
    # empty = the base model's own. Unset = the one the base model needs: sd-vae-ft-mse for the default
    # base (which ships without a good one, its card says), madebyollin/sdxl-vae-fp16-fix for an SDXL
    # base in half precision (SDXL's own VAE overflows in fp16), the model's own otherwise.
    vae: str | None = None
    # Fast mode: an LCM-LoRA for SD1.5 (a .safetensors file, a folder holding
    # pytorch_lora_weights.safetensors, a Hugging Face id or modelscope:<id>), drawn in few steps;
    # and the one for an SDXL base.
    fast_lora: str = "latent-consistency/lcm-lora-sdv1-5"
    fast_lora_sdxl: str = "latent-consistency/lcm-lora-sdxl"
    # With an SDXL base: the side of its portraits and training images in pixels (1024 is SDXL's own;
    # FaceChain's 768 is lighter). SD1.5 uses portrait_size and train_resolution.
    sdxl_size: int = Field(default=1024, ge=64, le=1536, multiple_of=8)
    # Pose control: an OpenPose ControlNet for SD1.5 (a local folder, a Hugging Face id or modelscope:<id>),
    # loaded the first time a portrait asks for a pose and sharing the base model's weights; empty = no poses.
    pose_controlnet: str = "lllyasviel/control_v11p_sd15_openpose"
    # The body pose of a photo a member brings: DWPose's two ONNX models (yolox_l.onnx and
    # dw-ll_ucoco_384.onnx: a local folder, a Hugging Face id or modelscope:<id>); empty = preset poses only.
    pose_detector: str = "yzd-v/DWPose"
    # FaceChain's pose "with depth": a pose photo's depth map read by a second ControlNet (at half the
    # pose's strength). Off by default; the depth ControlNet and the transformers depth estimator
    # (local folder, Hugging Face id or modelscope:<id>) are fetched only when it is on.
    pose_depth: bool = False
    depth_controlnet: str = "lllyasviel/control_v11f1p_sd15_depth"
    depth_estimator: str = "Intel/dpt-hybrid-midas"
    # Upscale x4 (a button under portraits, `facechain upscale --x4`): Real-ESRGAN's RRDB model, the repository
    # (a Hugging Face id, modelscope:<id>, or a local folder or .pth file) and the file in it; empty = off.
    upscaler: str = "lllyasviel/Annotators"
    upscaler_file: str = "RealESRGAN_x4plus.pth"
    # Instant portraits: a likeness from the enrolled photos alone, before the face model is trained (IP-Adapter
    # FaceID Plus v2). Its weights and insightface's ArcFace pack are licensed for NON-COMMERCIAL use only: off
    # until the owner turns it on. It needs FACECHAIN_INSIGHTFACE_MODEL_DIR (the buffalo_l pack, for ArcFace).
    instant: bool = False
    # The adapter (a Hugging Face id, modelscope:<id>, or a local folder or file) and its file, which holds its LoRA.
    instant_adapter: str = "h94/IP-Adapter-FaceID"
    instant_adapter_file: str = "ip-adapter-faceid-plusv2_sd15.bin"
    # The CLIP ViT-H image encoder the adapter reads a face's structure with: a repository and its folder in it.
    instant_image_encoder: str = "h94/IP-Adapter"
    instant_image_encoder_folder: str = "models/image_encoder"
    # Portraits use fast mode unless the member asks otherwise; steps and guidance of fast mode.
    fast_by_default: bool = False
    fast_steps: int = Field(default=6, ge=1, le=50)
    fast_guidance: float = Field(default=1.5, ge=0, le=10)
    # Where torch runs: auto picks cuda, then mps, then cpu.
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"

    # Face analysis backend: dlib ships with the install; insightface needs its model pack.
    face_backend: Literal["dlib", "insightface"] = "dlib"
    # Folder holding an insightface model pack (e.g. ~/.insightface/models/buffalo_l).
    insightface_model_dir: Path | None = None
    # Two faces closer than this are the same person; empty = the backend's own default
    # (dlib 0.6 on its 128-d embedding, insightface 1.1 on its normalised 512-d one).
    face_match_threshold: float | None = Field(default=None, gt=0)

    # Training photos as the FaceChain paper prepares them. A learned face parser (a SegFormer trained on
    # CelebAMask-HQ: a local folder, a Hugging Face id or modelscope:<id>) finds the head; empty, or not
    # downloaded yet, = a mask from the face's landmarks. Everything outside the head is painted white
    # (false = keep each photo's background), and the skin retouched at this strength (0 = off, 1 = full).
    # Both apply to photos enrolled from then on.
    face_parser: str = "jonathandinu/face-parsing"
    white_background: bool = True
    skin_retouch: float = Field(default=0.7, ge=0, le=1)

    # Optional safety check of finished portraits: a Stable Diffusion safety checker (a local folder, a
    # Hugging Face id such as CompVis/stable-diffusion-safety-checker, or modelscope:<id>); empty = off.
    # Each server's NSFW policy (/facechain-admin settings) decides what happens to flagged portraits.
    safety_checker: str = ""

    # Optional learned face swapper (an inswapper_128.onnx); empty = classical fusion, no model needed.
    # Needs the insightface backend, whose ArcFace identities it takes.
    face_swapper_model: Path | None = None

    # Selfie limits: photos larger than this many megapixels are refused before decoding.
    max_photo_megapixels: float = Field(default=40.0, gt=0)
    # Largest accepted upload, in megabytes.
    max_upload_mb: float = Field(default=25.0, gt=0)
    # Most photos taken in one enrollment.
    max_photos_per_enroll: int = Field(default=10, ge=1, le=50)
    # Selfie quality floors; a photo below one is rejected with the measured value.
    min_face_px: int = Field(default=80, ge=16)
    min_sharpness: float = Field(default=20.0, ge=0)
    min_brightness: float = Field(default=40.0, ge=0, le=255)
    max_brightness: float = Field(default=225.0, ge=0, le=255)
    max_yaw: float = Field(default=0.45, gt=0, le=1)

    # Face LoRA training (defaults from FaceChain). Steps = photos x steps_per_photo, capped.
    lora_rank: int = Field(default=4, ge=1, le=128)
    lora_alpha: float = Field(default=4.0, gt=0)
    learning_rate: float = Field(default=1.5e-4, gt=0, lt=1)
    train_steps_per_photo: int = Field(default=200, ge=1)
    train_max_steps: int = Field(default=2000, ge=1)
    # Side of the square training images, in pixels (a multiple of 8).
    train_resolution: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    # On a CUDA GPU, train through torch.compile's CUDA graphs (mode reduce-overhead): the step's thousands of
    # kernel launches replayed as one. Compiled once per worker; where it fails, training goes on without it.
    # Off until measured on your card (`bench/gpu_sd15.py` times both).
    train_compile: bool = False

    # Right after an enrollment, while the face model trains: two preview portraits in this style (the base
    # model with the member's enrolled face fused on), queued behind trained members' portraits.
    training_previews: bool = True
    training_preview_style: str = "studio-headshot"

    # How much of the member's selfie classical fusion puts over a portrait's face (1 = all of it
    # inside the face mask); FaceChain blends LoRA portraits at partial strength. Where fusion would
    # break the portrait's light along the blend edge, half of it is used, then none.
    fusion_strength: float = Field(default=0.9, gt=0, le=1)

    # Portraits: candidates drawn per request (the best are returned) and their size in pixels.
    portrait_candidates: int = Field(default=8, ge=1, le=16)
    portrait_size: int = Field(default=512, ge=64, le=1024, multiple_of=8)

    # Folder of style files (*.toml); empty = the styles shipped with the bot.
    styles_dir: Path | None = None

    # Job queue: how long a worker's claim on a job lasts without a heartbeat, in seconds.
    job_lease_seconds: int = Field(default=60, ge=2)
    # Attempts for a job that fails for a passing reason (out of GPU memory, a crash), then it fails.
    job_max_attempts: int = Field(default=3, ge=1, le=10)
    # First retry delay in seconds; it doubles with each attempt.
    job_retry_seconds: float = Field(default=10.0, ge=0)
    # Portrait requests one member may have waiting at once.
    max_queued_portraits_per_user: int = Field(default=3, ge=1)
    # Jobs a server (guild) may start per UTC day; 0 = no limit.
    guild_daily_quota: int = Field(default=0, ge=0)

    # More than one GPU machine: the Ray cluster's address (host:port from `ray start --head`, or auto);
    # empty = jobs run on this machine's worker. Ray has no authentication: a public address is refused
    # unless allowed here. Actors: one per GPU in the cluster (0), or this many.
    ray_address: str = ""
    ray_allow_public: bool = False
    ray_actors: int = Field(default=0, ge=0)
    # A cluster job whose GPU machine stops answering (a hung driver, a CUDA deadlock) is handed back
    # after this many minutes, and its actor restarted: trainings, and every other kind of job.
    train_time_limit_minutes: float = Field(default=180, gt=0)
    job_time_limit_minutes: float = Field(default=30, gt=0)

    # Retention in days (0 = keep): portraits not shared to a gallery, and enrolled selfies.
    portrait_retention_days: float = Field(default=0, ge=0)
    selfie_retention_days: float = Field(default=0, ge=0)
    # Back up the database every this many hours into <data>/backups (0 = never), keeping this many.
    backup_every_hours: float = Field(default=24, ge=0)
    backups_kept: int = Field(default=7, ge=1)

    # Read-only web gallery of shared portraits, served by the bot (off by default).
    web_gallery: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=1, le=65535)
    # Public address of the web gallery for the links admins get (e.g. https://gallery.example.org);
    # empty = http://<web_host>:<web_port>.
    web_base_url: str = ""

    # Every picture carries a C2PA manifest saying it was made by AI, signed with a chain the bot makes in
    # <data>/provenance on first start (validators call it untrusted, and intact). Set both to sign with
    # your own (a PEM chain, leaf first, and its PEM private key; ES256).
    provenance_cert: Path | None = None
    provenance_key: Path | None = None
    # Styles a server's admins may add with /facechain-admin style-add: how many, and their LoRAs' size in all (MB).
    guild_styles_max: int = Field(default=20, ge=0)
    guild_styles_max_mb: int = Field(default=1024, ge=0)

    # Refuse enrollment photos that look like another member's face (each member enrolls only their own face;
    # a weaker likeness goes to the server's audit log). Off only where several accounts must share a face:
    # load tests, or identical twins on a small server.
    one_face_per_member: bool = True
    # Questions a member may send a day with /facechain together (0 = no limit).
    together_asks_per_day: int = Field(default=10, ge=0)

    # Logging level for the CLI, worker and bot.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "facechain.db"

    @property
    def vae_reference(self) -> str:
        return self.vae_for(self.base_model)

    @classmethod
    def default(cls, name: str):
        """A setting's default, for messages that tell an owner what to set it back to."""
        return cls.model_fields[name].default

    def vae_for(self, base_model: str, half_vae: str = "") -> str:
        """The separate VAE to load beside `base_model` ("" = the base model's own): the setting, or when
        it is unset, the one that base model needs (`half_vae`: its family's fp16-safe VAE, in half precision)."""
        if self.vae is not None:
            return self.vae.strip()
        return DEFAULT_BASE_VAE if base_model.strip() == DEFAULT_BASE_MODEL else half_vae

    def portrait_size_for(self, family: str) -> int:
        return self.sdxl_size if family == "sdxl" else self.portrait_size

    def train_resolution_for(self, family: str) -> int:
        return self.sdxl_size if family == "sdxl" else self.train_resolution

    def fast_lora_for(self, family: str) -> str:
        return self.fast_lora_sdxl if family == "sdxl" else self.fast_lora

    def time_limit_seconds(self, kind: str) -> float:
        """How long a cluster job of `kind` may run before its machine is taken to be hung."""
        return 60 * (self.train_time_limit_minutes if kind == "train" else self.job_time_limit_minutes)


def _one_line(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "settings"
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        problems.append(f"{ENV_PREFIX}{field.upper()}: {item['msg']}{shown}")
    return "; ".join(problems)


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation errors into one line that names each bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(f"Invalid setting: {_one_line(error)}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
