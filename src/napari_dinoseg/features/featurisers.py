"""The registry of feature kinds: kind name -> :class:`~.base.Featuriser` class, and
:func:`featuriser_for`, which builds the one a job uses."""

from __future__ import annotations

from typing import Optional, Union

from ..config import FeatureConfig, config_or_default
from ..feature_kinds import KINDS, KindTraits, add_kind, remove_kind
from .base import Featuriser
from .classical_featuriser import ClassicalFeaturiser
from .hybrid_featuriser import HybridFeaturiser
from .vit_featuriser import ViTFeaturiser

#: Feature kind -> its featuriser class.
FEATURISERS: dict[str, type[Featuriser]] = {cls.kind: cls for cls in (ClassicalFeaturiser, ViTFeaturiser,
                                                                      HybridFeaturiser)}


def register(cls: type[Featuriser], traits: Optional[KindTraits] = None) -> type[Featuriser]:
    """Make ``cls`` the featuriser of kind ``cls.kind``, so that ``FeatureConfig(kind=cls.kind)``
    is valid and every path (training, prediction, bundles, the CLI) featurises through it.
    Usable as a class decorator.

    Parameters
    ----------
    cls
        A :class:`~.base.Featuriser` subclass with a new :attr:`~.base.Featuriser.kind`.
    traits
        Which of the config's families it uses (default: neither the ViT's nor the filter bank's
        settings apply: :class:`~napari_dinoseg.feature_kinds.KindTraits`).
    """
    if not (isinstance(cls, type) and issubclass(cls, Featuriser)):
        raise TypeError(f"a featuriser must be a Featuriser subclass, got {cls!r}")
    add_kind(cls.kind, KINDS.get(cls.kind, KindTraits()) if traits is None else traits)
    FEATURISERS[cls.kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Forget a registered kind (the built-in ones stay)."""
    remove_kind(kind)
    if kind not in KINDS:
        FEATURISERS.pop(kind, None)


def featuriser_for(config: Union[FeatureConfig, Featuriser, None] = None, device=None) -> Featuriser:
    """The featuriser of ``config``'s kind, built (device and presets resolved) once; a
    featuriser is returned as it is.

    Parameters
    ----------
    config
        A feature config (``FeatureConfig()`` when omitted) or a featuriser already built.
    device
        The torch device to use instead of resolving ``config.device``.
    """
    if isinstance(config, Featuriser):
        return config
    config = config_or_default(config, FeatureConfig)
    try:
        cls = FEATURISERS[config.kind]
    except KeyError:
        raise ValueError(f"no featuriser is registered for kind {config.kind!r}") from None
    return cls.build(config, device)


def described(config: FeatureConfig) -> Featuriser:
    """The featuriser of ``config`` without a device: for questions about its channels and
    geometry (names, layout, ``margin``, ``alignment``, ``n_features``), never for computing;
    nothing is resolved and torch is not imported."""
    try:
        return FEATURISERS[config.kind](config, None)
    except KeyError:
        raise ValueError(f"no featuriser is registered for kind {config.kind!r}") from None
