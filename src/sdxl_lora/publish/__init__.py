"""Publishing a run: Hugging Face Hub upload and resume download (hub.py), the model card (model_card.py)."""
