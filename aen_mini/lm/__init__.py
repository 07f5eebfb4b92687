"""Language models: the registry (online and offline), the tiny GPT-NeoX, the SmolLM2 loader."""
