"""The files of a face model's folder: its LoRA weights, what trained it, and a training's checkpoint.
(Light on purpose: the dispatcher, doctor and the generator's imports read these names without torch.)"""

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
META_FILE = "meta.json"
CHECKPOINT_FILE = "checkpoint.pt"  # in the `<version>.partial` folder while a training is unfinished
