"""Models: where they come from, the base pipeline and its memory plans, the device, the safety check."""
