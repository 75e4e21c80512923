"""Training: the face-LoRA trainer and the training job's steps (inputs from the store, weights back to it)."""
