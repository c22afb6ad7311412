"""uepjax: straggler-tolerant distributed matrix multiplication with UEP codes."""

__version__ = "0.1.0"
