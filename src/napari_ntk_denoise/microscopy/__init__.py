"""Microscopy on top of the engine: Poisson-Gaussian noise (estimation, variance-stabilising
transform), tiled planes and stacks of planes."""
