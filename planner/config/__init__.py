"""The only code that reads `conf/`: schemas for every group and verb, composition, aliases, Hydra glue."""
