"""Notebook aids (top floor): `anatomy` tabulates a checkpoint's weights, `blocks` draws the KV
block pool, `widgets` draws quantization error interactively. Logic lives in plain functions the
notebooks also call, so it runs headless."""
