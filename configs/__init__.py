"""The training presets (``*.toml``), installed as ``c2w_fast.configs``: see ``c2w_fast.config.preset_path``."""
