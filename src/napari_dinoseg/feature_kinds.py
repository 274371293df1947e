"""The feature kinds this process knows, and what each is made of: :data:`KINDS`.

Torch-free and below :mod:`napari_dinoseg.config`, which validates ``FeatureConfig.kind``
against this table and answers ``uses_vit`` / ``uses_classical`` from it. The built-in kinds
are listed here; a new kind enters through
:func:`napari_dinoseg.features.featurisers.register`, which adds its row (see
``docs/architecture.md``, "How to add a feature kind").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindTraits:
    """Which of the config's feature families a kind's channels come from.

    Attributes
    ----------
    vit
        It runs a ViT backbone: the config's model, stride, shifts, flips, facet, weights and
        tile apply, its presets are resolved per device, and it needs weights.
    classical
        It computes the classical filter bank: the config's sigmas and membrane settings apply.
    volumes
        Its featuriser computes features of ``(Z, Y, X)`` volumes (``halo``, ``volume_block``,
        ``volume_features``): ``dims=3`` is valid.
    """

    vit: bool = False
    classical: bool = False
    volumes: bool = False


#: Feature kind -> its traits, for every kind :class:`~napari_dinoseg.config.FeatureConfig` accepts.
KINDS: dict[str, KindTraits] = {
    "classical": KindTraits(classical=True, volumes=True),
    "vit": KindTraits(vit=True, volumes=True),
    "hybrid": KindTraits(vit=True, classical=True, volumes=True),
}


def add_kind(name: str, traits: KindTraits) -> None:
    """Make ``name`` a feature kind a config may name (the featuriser registry calls this).

    Raises
    ------
    ValueError
        ``name`` is not a non-empty identifier, or is taken by a kind with other traits.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a feature kind's name must be an identifier, got {name!r}")
    if KINDS.get(name, traits) != traits:
        raise ValueError(f"feature kind {name!r} exists already, with other traits: {KINDS[name]}")
    KINDS[name] = traits


def remove_kind(name: str) -> None:
    """Forget a kind added by :func:`add_kind` (the built-in ones stay)."""
    if name not in BUILT_IN:
        KINDS.pop(name, None)


#: The kinds this package ships.
BUILT_IN = tuple(KINDS)
