"""llmslim: make large language models cheaper to run."""

__version__ = "0.1.0"
