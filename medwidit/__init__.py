"""medwidit: medical volume segmentation by conditional diffusion with a windowed diffusion transformer.

``medwidit.segment(image, bundle=...)`` is the one-call API (the same path as ``medwidit segment``); the rooms are
``medwidit.nets`` (backbone), ``medwidit.diffusion``, ``medwidit.inference``, ``medwidit.training``, ``medwidit.data``.
"""

__version__ = "0.1.0"

_LAZY = {"segment", "Predictor", "Segmentation"}  # imported on first use, so `import medwidit.nets` stays light


def __getattr__(name: str):
    if name in _LAZY:
        from medwidit import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'medwidit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
