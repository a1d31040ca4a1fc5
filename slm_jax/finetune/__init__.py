"""Task fine-tuning of a trained run: full or LoRA, on prompt/completion JSONL (docs/finetune.md)."""
