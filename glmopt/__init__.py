"""glmopt: turn a Hugging Face transformers model into a versioned, optimized ONNX artifact."""

__version__ = "0.1.0"
