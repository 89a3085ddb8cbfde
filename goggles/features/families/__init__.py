"""The backbone families beyond today's two networks, one module each; the registry
(:data:`goggles.features.backbones.FAMILIES`) names them.

Each module has ``LIBRARY`` (the package it needs), ``EXTRA`` (the goggles extra that installs
it), ``CACHE`` (where its library keeps downloaded weights) and
``load(arch, tag, name, state, where) -> (FeatureNet, source)``: the architecture built at random
initialisation, then ``state`` loaded (explicit weights, from ``where``) or, when ``state`` is
``None``, the library's own weights (its cache first, a download when the network allows).
"""
