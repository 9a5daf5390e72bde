"""What a model is: its source (profile, directory, config.json), architecture rules, safetensors headers, inventory."""
