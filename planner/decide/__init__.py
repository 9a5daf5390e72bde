"""Decide before sizing: the policy value, dtype / quantization / KV dtype / attention kernel, and the software stack.

decisions.py picks the formats with their reasons; quant_support.py says what transformers does with each shipped
quantization on a target; stack.py reads installed versions from package metadata; policy.py is the parsed policy.
"""
