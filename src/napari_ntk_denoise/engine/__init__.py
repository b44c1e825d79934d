"""The closed-form NTK filter: kernels, Nystrom eigenimages, twicing, stopping rules, the pipeline.

Data go down one path: :mod:`.problem` prepares the image and the options (:mod:`.config`),
:mod:`.kernels` and :mod:`.nystrom` give the kernel columns and the eigenimages,
:mod:`.pipeline` fits each stage and chooses its step (:mod:`.stopping`), and :mod:`.results`
renders the output; :mod:`.denoise` composes them into the public generators.
"""
