"""Fine-tuning a model on a user's scenes from their corrected bridge layer (``hbdnet finetune``)."""
