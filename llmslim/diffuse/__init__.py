"""Masked diffusion from an AR model (MDLM + DiffuLLaMA) and few-step distillation (SDTT)."""
