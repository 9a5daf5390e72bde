"""Predicted speed: the roofline model, its inputs from a placed plan, and the factors fitted from measured runs.

roofline.py is pure arithmetic (decode tokens/s, time to first token); block.py turns a placed plan into its inputs and
the plan's `performance` block; calibration.py fits the efficiency factors.
"""
