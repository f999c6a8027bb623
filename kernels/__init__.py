"""Feature registry and Numba kernels shared by training and serving."""
