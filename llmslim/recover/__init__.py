"""`llmslim recover`: fine-tune a pruned model back towards its dense teacher (LoRA or full,
knowledge distillation + next-token loss)."""
