"""vLLM backend: the offline engine stepped by llem so each token gets a host timestamp.

`vllm` itself is imported only when a model is loaded, so this package imports anywhere.
"""
