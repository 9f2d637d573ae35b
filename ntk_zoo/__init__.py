"""ntk_zoo: fast finite-width empirical neural tangent kernels in JAX, and a model zoo."""
