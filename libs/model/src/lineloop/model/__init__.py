"""The inspection model shared by training, registry, compiler and serving.

numpy-only: `metrics`, `manifest`, `preprocess`, `evaluate_onnx`.
torch: `net` (the classifier), `export` (ONNX under the serving contract).
"""
