"""Layer 2: CNN backbones, feature extraction, the feature store, fine-tuning and the workspace of built sets."""
