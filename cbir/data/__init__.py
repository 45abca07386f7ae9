"""Layer 1: images and collections (decoding, catalogs and splits, hygiene, the Open Clip Art build, queries)."""
