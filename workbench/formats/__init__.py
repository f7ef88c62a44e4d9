"""Storage formats as pure arithmetic, below every loader and quantizer (floor 1: errors only).

`gguf_blocks`: llama.cpp's Q8_0 / Q4_0 / Q4_1 blocks, decoded and encoded byte for byte.
"""
