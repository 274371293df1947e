"""Feature controls shared by the dock widgets, and the feature cache they share."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Label, LineEdit, SpinBox
from qtpy.QtCore import QTimer

from ..config import DEVICES, FeatureConfig
from ..feature_kinds import KINDS
from ..features.featurise import FeatureCache
from ..features.registry import MODELS
from ._sections import Section
from ._text import message_area

#: How a widget's user gives a checkpoint file (the end of the missing-weights message).
WEIGHTS_HINT = "or type the path of a checkpoint file in the 'weights' field (under 'feature details')"
#: The plan line is checked again this long after the last keystroke in the weights field (ms).
WEIGHTS_EDIT_MS = 400
#: One feature cache for every dock widget of the session: the unsupervised widget reuses
#: what the train widget computed, and the other way round.
SHARED_CACHE = FeatureCache()

#: Labels of the built-in feature kinds: (label shown, FeatureConfig.kind).
FEATURE_CHOICES = [
    ("classical (Weka-style filters)", "classical"),
    ("DINOv2", "vit"),
    ("hybrid (classical + DINOv2)", "hybrid"),
]
#: Upsampler views: label -> (use shifts, flips); None leaves both to the device preset.
VIEWS_PRESET = "preset for the device"
VIEW_CHOICES = {VIEWS_PRESET: None, "one view": ((), False), "shifts": (True, False),
                "flips": ((), True), "shifts + flips": (True, True)}
#: The tooltip of the '3-D features (volume)' checkbox (docks whose image may be a volume).
VOLUME_TIP = ("compute the classical filters in 3-D: each voxel's features see the neighbouring slices, and the "
              "sigmas are scaled per axis by the image layer's scale (its z step against its pixel size). Strokes "
              "on any slices then train one classifier of the whole volume. DINOv2 features of a volume are those "
              "of its z-slices, or of its xy, xz and yz slices averaged ('ViT planes'); no membrane projections "
              "in 3-D")
#: The 'ViT planes' menu of a volume with ViT features: (shown, FeatureConfig.volume_planes).
VOLUME_PLANES = [("xy slices", "xy"), ("xy, xz and yz slices (tri-planar)", "triplanar")]


class FeatureControls:
    """Feature kind, ViT backbone and upsampler settings, classical sigmas; builds a FeatureConfig.

    Not a container of its own: a widget adds ``widgets`` to its layout (the kind and the plan in
    view, the rest in the folding ``details`` section), so the labels line up with the widget's
    other controls. With ``volumes``, ``widgets`` holds the '3-D features (volume)' checkbox too
    (``volume``), shown while the owner says its image is a volume (:meth:`allow_volume`): ticked,
    with a kind that has a 3-D featuriser, the config has ``dims=3``.
    """

    def __init__(self, kind: str = "classical", volumes: bool = False) -> None:
        self.kind = ComboBox(choices=feature_choices(), value=kind, label="features")
        self.volume = CheckBox(value=False, text="3-D features (volume)", visible=False, tooltip=VOLUME_TIP)
        self._volume_image = False  # the owner's image is a (Z, Y, X) volume: the checkbox applies
        self.planes = ComboBox(choices=VOLUME_PLANES, value="xy", label="ViT planes", visible=False)
        self.planes.tooltip = ("which slices of the volume the ViT sees: its z-slices, or the xy, xz and yz slices "
                               "through each voxel averaged (tri-planar: about 16x the time of xy on a CPU)")
        self.model = ComboBox(choices=sorted(MODELS), value="dinov2_vits14", label="model")
        self.stride = SpinBox(value=0, min=0, max=16, label="stride (0 = preset)")
        self.views = ComboBox(choices=list(VIEW_CHOICES), value=VIEWS_PRESET, label="upsampler views")
        self.shifts = LineEdit(value="1, 2", label="shifts (px)")
        self.facet = ComboBox(choices=["token", "key", "query", "value"], value="token", label="ViT descriptor")
        self.layer = SpinBox(value=-1, min=-40, max=39, label="block (-1 = last)")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.weights = LineEdit(value="", label="weights")
        self.weights.native.setPlaceholderText("released weights; or a file path; or 'random' (tests only)")
        self.plan = message_area("", lines=1)
        self.sigmas = LineEdit(value="1, 2, 4, 8, 16", label="sigmas (px)")
        self.membrane = CheckBox(value=True, text="membrane projections")
        low, high = FeatureConfig.percentiles
        self.percentiles = LineEdit(value=f"{low:g}, {high:g}", label="normalise (percentiles)")
        tips = {
            self.kind: "classical filters (fast, no weights), DINOv2 features (semantic; needs weights), or both",
            self.model: "the ViT backbone; its released weights file must be on this machine",
            self.stride: "pixels between ViT patches: smaller is finer and slower (0: the device's preset)",
            self.views: "shifted / flipped copies averaged to bring ViT features to pixel resolution",
            self.shifts: "the shifts (px) of the shifted views",
            self.facet: "which descriptor of the block: its output tokens, or its attention's keys (best for "
                        "matching parts and objects), queries or values",
            self.layer: "the transformer block the descriptor comes from: -1 the last; earlier blocks are more "
                        "local and faster (later blocks are not run)",
            self.device: "where the ViT runs: auto picks a GPU when there is one",
            self.weights: "a checkpoint file (.pth / .safetensors); empty: the released file in the weights folder "
                          "or the Hugging Face cache",
            self.plan: "what the ViT will do on this device, and about how long it takes",
            self.sigmas: "Gaussian scales (px) of the classical filters",
            self.membrane: "add Weka's membrane projections (thin bright or dark lines)",
            self.percentiles: "each image's low and high intensity percentiles, mapped to 0 and 1 before the "
                              "features; 25, 75 keeps phase fractions steadier across images of different "
                              "brightness (see docs/measure.md)",
        }
        for widget, tip in tips.items():
            widget.tooltip = tip
        self.vit_widgets = [self.model, self.stride, self.views, self.shifts, self.facet, self.layer, self.device,
                            self.weights, self.plan]
        details = [w for w in self.vit_widgets if w is not self.plan] + [self.sigmas, self.membrane, self.percentiles]
        self.details = Section("feature details", details,
                               tooltip="model, weights, upsampler views, stride, device, sigmas of the filters, "
                                       "intensity normalisation")
        self.widgets = [self.kind, *([self.volume, self.planes] if volumes else []), self.plan, self.details]
        for w in (self.views, self.model, self.volume):
            w.changed.connect(self.update_visibility)
        self.kind.changed.connect(self._on_kind)
        self._weights_timer = QTimer(self.weights.native)  # the plan follows the weights field as typed; dies with it
        self._weights_timer.setSingleShot(True)
        self._weights_timer.setInterval(WEIGHTS_EDIT_MS)
        self._weights_timer.timeout.connect(self.update_visibility)
        self.weights.native.textEdited.connect(lambda *_: self._weights_timer.start())  # typed, not set
        self.weights.native.editingFinished.connect(self.update_visibility)
        # the owner calls update_visibility() once the widgets are in its layout: showing a
        # widget that has no parent yet would open it as a window of its own

    def config(self) -> FeatureConfig:
        """The FeatureConfig the controls describe; presets left unset are resolved for the
        device in the worker (raises ValueError if a control holds an invalid value)."""
        sigmas = numbers(self.sigmas.value, "sigmas", "1, 2, 4, 8, 16", float)
        percentiles = numbers(self.percentiles.value, "normalise (percentiles)", "5, 95", float)
        if len(percentiles) != 2:
            raise ValueError(f"normalise (percentiles) {self.percentiles.value!r}: give two numbers, the low and the "
                             "high percentile, e.g. 5, 95")
        kind = self.kind.value
        if not KINDS[kind].vit:  # the ViT's settings (model, views, device, weights) do not apply
            return FeatureConfig(kind=kind, sigmas=sigmas, membrane=bool(self.membrane.value), percentiles=percentiles,
                                 dims=3 if self.volume_active else 2)
        views = VIEW_CHOICES[self.views.value]
        shifts = flips = None
        if views is not None:
            use_shifts, flips = views
            shifts = numbers(self.shifts.value, "shifts", "1, 2", int) if use_shifts else ()
        return FeatureConfig(
            kind=kind, model=self.model.value, stride=int(self.stride.value) or None, shifts=shifts, flips=flips,
            facet=self.facet.value, layer=int(self.layer.value),
            weights=str(self.weights.value).strip() or None, device=self.device.value,
            sigmas=sigmas, membrane=bool(self.membrane.value), percentiles=percentiles,
            dims=3 if self.volume_active else 2, volume_planes=self.planes.value if self.volume_active else "xy",
        )

    @property
    def volume_active(self) -> bool:
        """Whether the features are 3-D: the checkbox shown (a volume), enabled (the kind has a 3-D
        featuriser) and ticked."""
        return self._volume_image and KINDS[self.kind.value].volumes and bool(self.volume.value)

    def allow_volume(self, volume: bool) -> None:
        """The owner's image is (``True``) or is not a ``(Z, Y, X)`` volume: show the 3-D checkbox or hide it."""
        self._volume_image = bool(volume)
        self.update_visibility()

    def use(self, kind: str, weights: str = "", views: str = VIEWS_PRESET, stride: int = 0, device: str = "auto") -> None:
        """Set several controls at once (scripts and tests)."""
        self.weights.value, self.views.value = weights, views
        self.stride.value, self.device.value = stride, device
        self.kind.value = kind
        self.update_visibility()

    def prefer_classical_without_weights(self, note: Label, adds: str, tooltip: str = "") -> None:
        """Keep the ViT kind when its weights can be had (found here, or downloadable); otherwise
        switch to classical features and show ``note``: why, and what DINOv2 ``adds``."""
        problem = self.weights_problem()  # short; the whole message is the plan's tooltip
        note.visible = bool(problem)
        # the note explains the classical default: gone once the user picks a ViT kind
        self.kind.changed.connect(lambda *_: setattr(note, "visible", bool(problem) and not KINDS[self.kind.value].vit))
        if problem:
            self.kind.value = "classical"
            note.value = f"Classical features ({problem.replace('cannot run: ', '')}). {adds}"
            note.tooltip = f"{tooltip}. {self.plan.tooltip}" if tooltip else self.plan.tooltip
            if tooltip:
                self.kind.tooltip = note.tooltip

    def _on_kind(self, *_args) -> None:
        """A new kind: its controls; the details opened when a ViT cannot run (the plan line says
        so only for kinds that run one), so the weights field the plan line points to is in view."""
        self.update_visibility()
        if self.plan.value.startswith("cannot run"):
            self.details.expand()

    def update_visibility(self, *_args) -> None:
        """Show the controls that matter for the chosen feature kind (its traits: the ViT's
        settings and plan line, the filter bank's sigmas and membrane projections)."""
        traits = KINDS[self.kind.value]
        vit = traits.vit
        for w in self.vit_widgets:
            w.visible = vit
        self.volume.visible, self.volume.enabled = self._volume_image, traits.volumes
        self.sigmas.visible = traits.classical
        self.membrane.visible = traits.classical and not self.volume_active  # a 2-D filter: none in 3-D
        self.planes.visible = vit and self.volume_active
        self.shifts.visible = vit and self.views.value in ("shifts", "shifts + flips")
        self.plan.value = "" if not vit else self.weights_problem() or "preset: decided for the device when you click"

    def weights_problem(self) -> str:
        """Why the chosen ViT cannot run here (no weights, offline), or "" (asked when the mode changes,
        so the user learns it before painting; takes about a second at most)."""
        from pathlib import Path

        from ..features.registry import find_weights, model_spec, weights_dir

        self.plan.tooltip = "what the ViT will do on this device, and about how long it takes"
        try:
            find_weights(self.model.value, str(self.weights.value).strip() or None, hint=WEIGHTS_HINT)
        except ValueError as err:
            self.plan.tooltip = str(err)  # the whole story; the line itself stays short enough to read
            if not model_spec(self.model.value).files or str(self.weights.value).strip():
                return f"cannot run: {err}"
            folder = str(weights_dir()).replace(str(Path.home()), "~", 1)
            return (f"cannot run: no {self.model.value} weights here, and offline. Put "
                    f"{model_spec(self.model.value).files[0]} in {folder}, or type its path under 'weights'")
        return ""


def feature_choices() -> list[tuple[str, str]]:
    """``(label shown, kind)`` of every feature kind this process knows (:data:`~napari_dinoseg.feature_kinds.KINDS`):
    the built-in ones labelled (:data:`FEATURE_CHOICES`), a registered one by its name."""
    labels = {kind: label for label, kind in FEATURE_CHOICES}
    return [(labels.get(kind, kind), kind) for kind in KINDS]


def check_weights(config: FeatureConfig) -> None:
    """Refuse, within about a second, features whose weights cannot be had (DINOv2, hybrid);
    nothing for kinds without weights (:func:`~napari_dinoseg.features.registry.weights_for`)."""
    from ..features.registry import weights_for

    weights_for(config, hint=WEIGHTS_HINT)


def numbers(text: str, name: str, example: str, kind: type) -> tuple:
    """Parse ``"1, 2; 4"`` into a tuple of ``kind``; a ValueError naming the control otherwise."""
    try:
        return tuple(kind(s) for s in str(text).replace(";", ",").split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{name} {text!r}: give numbers separated by commas, e.g. {example}") from None
