"""sdxl-lora: an SDXL LoRA trainer that runs sd-scripts command lines."""

__version__ = "0.1.0"
