"""Layer 0: errors, configuration, names, atomic storage and the ranking metrics; imports nothing else of cbir."""
