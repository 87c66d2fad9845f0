"""The config schema: the common pieces every runnable config (configs/<name>.py) builds on,
the start-time checks (checks.py, ConfigError) and loading a runnable config by name (files.py).
"""
