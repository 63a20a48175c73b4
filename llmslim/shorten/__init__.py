"""`llmslim shorten`: fine-tune a chat model to answer shorter at equal quality, by on-policy RL
(TRL GRPO with a similarity + length reward) or by token-branching SFT, and measure the result."""
