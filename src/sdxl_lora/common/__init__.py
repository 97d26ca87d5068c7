"""Leaf helpers shared by every layer; they import nothing from sdxl_lora."""
