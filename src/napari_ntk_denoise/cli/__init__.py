"""The ``ntk-denoise`` command line: ``denoise``, ``stack``, ``dip`` and ``bench``."""
