from taylorlab.config.schema import register_configs  # noqa: F401
