"""Layer 3: the paper's evaluation (mAP@k, recall@k, visited), sweeps, tuning, model comparison, reports."""
