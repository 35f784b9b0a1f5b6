"""divrun's `gpus` Hydra launcher; Hydra finds launchers in the `hydra_plugins` namespace package."""
