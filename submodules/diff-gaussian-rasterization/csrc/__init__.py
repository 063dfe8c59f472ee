"""CUDA sources of the rasterizer, shipped as package data for the first-use build."""
