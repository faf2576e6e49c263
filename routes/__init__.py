"""The routing tables Junction ships: the demo's (``demo.toml``, its building model and
development credential) and ``site-example.toml``.  A package only so that the wheel
carries them; ``adapters.demo.runner`` reads them through ``importlib.resources``."""
