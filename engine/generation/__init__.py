"""Generation: portraits in a style and their requests, style previews, Sharper x2 and face swap."""
