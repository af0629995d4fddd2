"""xmtc: extreme multi-label text classification (XML-CNN, SGM) trained through DeepSpeed."""

__version__ = "0.1.0"
