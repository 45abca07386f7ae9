"""Layer 1: the nearest-neighbour indexes behind one contract (numba kernels, scan, E2LSH, cross-polytope LSH,
reference indexes) and the registry of index kinds; knows nothing of images or features."""
