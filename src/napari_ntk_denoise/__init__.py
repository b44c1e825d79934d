"""napari-ntk-denoise: closed-form neural-tangent-kernel denoising and deep-image-prior training.

The engine (everything importable from this package) needs no Qt or napari; the widgets live in
:mod:`napari_ntk_denoise._widgets`.
"""

__version__ = "0.1.0"
