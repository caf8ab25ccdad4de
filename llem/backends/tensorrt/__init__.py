"""TensorRT-LLM backend: engines built once per build-affecting settings, cached on disk, streamed per token.

`tensorrt_llm` is imported only when a model is loaded, so this package imports anywhere.
"""
