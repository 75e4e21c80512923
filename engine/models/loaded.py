"""The models a worker (or a cluster actor) loads once and keeps: the base pipeline, the portrait
generator with its adapter cache, the optional safety checker and the face analyzer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.config import Settings
from engine.memory import set_aside_for_life

# Face and style adapters the generator keeps loaded (the cluster's routing counts on the same number).
MAX_ADAPTERS = 8


class LoadedModels:
    def __init__(self, settings: Settings, on_base_loaded: Callable[[], None] | None = None,
                 style_cache=None) -> None:
        self.settings = settings
        self.style_cache = style_cache  # a StyleFileCache on a cluster's GPU machine (no disk shared with the store)
        # In a process that keeps its models for life, the loaded base is set aside from the cycle collector
        # (engine.memory.set_aside_for_life); tests load many bases in one process and leave it off.
        self.for_life = False
        self.on_base_loaded = on_base_loaded
        # Told of model downloads (what, bytes done, bytes in all) while the running job waits on them.
        self.on_download: Callable[[str, int, int], None] | None = None
        self._base = None
        self._generator = None
        self._safety = None
        self._upscaler = None
        self._instant_reader = None

    @property
    def loaded(self) -> bool:
        return self._base is not None

    @property
    def base(self):
        if self._base is None:
            from engine.models.base_model import load_base_pipeline

            self._base = load_base_pipeline(self.settings, on_progress=self._download_progress)
            if self.for_life:
                set_aside_for_life()
            if self.on_base_loaded is not None:
                self.on_base_loaded()
        return self._base

    def _instant_adapter(self):
        """Where instant portraits' adapter is (fetched at their first drawing), or None when they are off."""
        if not self.settings.instant:
            return None
        from engine.generation.instant import adapter_file

        return lambda: adapter_file(self.settings)

    @property
    def instant_reader(self):
        """ArcFace and CLIP's image encoder, for the jobs that read members' faces for instant portraits: beside the
        base model, in its precision, when one is loaded."""
        if self._instant_reader is None:
            from engine.generation.instant import InstantReader

            base = self._base
            self._instant_reader = InstantReader(self.settings, base.device if base else "cpu",
                                                 base.plan.dtype_name if base else "float32")
        return self._instant_reader

    def done_reading(self) -> None:
        """After a read: the image encoder (ViT-H, 1.2 GB in fp16) stays for the next enrolment's read only where
        the memory plan has room; on a card that saves memory, the drawing gets it back."""
        base = self._base
        if base is not None and (base.plan.attention_slicing or base.plan.cpu_offload):
            self._instant_reader = None

    def _download_progress(self, what: str, done: int, total: int) -> None:
        if self.on_download is not None:
            self.on_download(what, done, total)

    @property
    def generator(self):
        if self._generator is None:
            from engine.generation.generate import PortraitGenerator

            self._generator = PortraitGenerator(self.base, MAX_ADAPTERS, fast_lora=self.settings.fast_lora_for(self.base.family.name),
                                                pose_controlnet=self.settings.pose_controlnet,
                                                depth_controlnet=self.settings.depth_controlnet,
                                                style_cache=self.style_cache, instant_adapter=self._instant_adapter())
        return self._generator

    @property
    def safety(self):
        """The optional safety checker (None when FACECHAIN_SAFETY_CHECKER is empty), beside the base model."""
        if self._safety is None and self.settings.safety_checker:
            from engine.models.safety import load_safety_checker

            self._safety = load_safety_checker(self.settings, self.base)
        return self._safety

    @property
    def upscaler(self):
        """Upscale x4's network (FACECHAIN_UPSCALER), loaded at the first Upscale x4, beside the base model."""
        if self._upscaler is None:
            from engine.generation.upscale_x4 import load_configured_upscaler

            self._upscaler = load_configured_upscaler(self.settings, self._base)  # the base is not loaded for it
        return self._upscaler

    @property
    def analyzer(self):
        from engine.faces import get_analyzer

        return get_analyzer(self.settings)

    def loaded_adapters(self) -> list[str]:
        """The adapters in the generator's cache: face models by their key (member, version, weights),
        style and fast-mode LoRAs by their reference."""
        keys = self._generator.loaded_adapters if self._generator is not None else []
        return [Path(key).name if key.startswith("/") else key for key in keys]

    def unload(self, names: list[str]) -> list[str]:
        """Take adapters (as `loaded_adapters` names them) out of the generator and its GPU memory;
        returns those that were loaded."""
        if self._generator is None:
            return []
        gone = [key for key in self._generator.loaded_adapters
                if (Path(key).name if key.startswith("/") else key) in names]
        for key in gone:
            self._generator.forget_adapter(key)
        if gone:
            from engine.models.base_model import release_cached_memory

            release_cached_memory()
        return [Path(key).name if key.startswith("/") else key for key in gone]

    def fit_memory(self, low_memory: bool = False) -> None:
        """Memory savers for the next job: what the memory this process may use asks for, and all of
        them for a retry after running out of memory. The job after plans afresh."""
        from engine.models.base_model import MemoryPlan, apply_memory_savers, current_plan

        if self._base is None and not low_memory:  # loading it plans for it (a job may not need it: Upscale x4)
            return
        plan = current_plan(self.base.device, self.base.family)
        if low_memory:
            plan = MemoryPlan(plan.dtype_name, True, True, self.base.device == "cuda", "retry after running out of memory")
        apply_memory_savers(self.base, plan)
