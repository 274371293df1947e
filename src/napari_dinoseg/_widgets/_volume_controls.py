"""The train dock's 3-D path for a ``(Z, Y, X)`` image layer (GUI thread).

:class:`VolumeControls` is a mixin of :class:`~.train_widget.TrainWidget`, as
:class:`~._train_pyramid.PyramidControls` is for multiscale images: for a single-channel 3-D image
layer it shows the '3-D features (volume)' checkbox of the feature controls
(:meth:`~._feature_controls.FeatureControls.allow_volume`); ticked, a click's (or live update's)
job becomes a :class:`~._train_volume.VolumeJob`: the strokes of every slice train one classifier
of 3-D features, with the layer's scale as the voxel spacing, and the slice in view (or the whole
volume) is predicted into the image's ``(Z, Y, X)`` predictions layer. A loaded classifier brings
its own dims: one of 3-D features predicts a volume layer whatever the checkbox, and is refused for
an image that is not one; one of 2-D features is refused while the checkbox is ticked.
"""

from __future__ import annotations

from typing import Optional

from napari.layers import Image

from ._layers import spatial_shape
from ._train_job import TrainJob
from ._train_layers import take_result, write_result
from ._train_volume import (VolumeJob, VolumeResult, describe_spacing, planes_classifier_refusal, run_volume_job,
                            spacing_from_scale, volume_classifier_refusal)


def is_volume(image: Optional[Image]) -> bool:
    """Whether an image layer is a single-channel ``(Z, Y, X)`` volume (not RGB, not multiscale)."""
    return image is not None and not image.rgb and not image.multiscale and len(spatial_shape(image)) == 3


def layer_spacing(image: Image) -> Optional[tuple[float, float, float]]:
    """``(dz, dy, dx)`` of a volume layer, from its scale (:func:`._train_volume.spacing_from_scale`)."""
    return spacing_from_scale(image.scale, getattr(image, "units", None))


class VolumeControls:
    """Mixin of the train dock: its 3-D jobs and results. Expects the
    :class:`~.train_widget.TrainWidget` attributes (``_viewer``, ``_image``, ``features``,
    ``loaded``, ``_loaded_name``, ``_status``, ``_state``...)."""

    def _volume_picked(self, image: Optional[Image]) -> None:
        """The image menu changed: the 3-D checkbox shown for a volume, hidden otherwise."""
        self.features.allow_volume(is_volume(image))

    def _volume_loaded(self) -> None:
        """A classifier was loaded: one of 3-D features is said so in the 'classifier in use' line,
        and ticks the checkbox when a volume is picked (it predicts in 3-D whatever the box; the box
        says so)."""
        if self.loaded is None or self.loaded.features.dims != 3:
            return
        self._state.value += f"; 3-D features of volumes, trained on {describe_spacing(self.loaded.spacing)}"
        if is_volume(self._image.value):
            self.features.volume.value = True

    def _volume_job(self, job: TrainJob) -> Optional[tuple]:
        """``(run_volume_job, (VolumeJob,))`` when ``job`` (read from the layers by ``_make_job``)
        trains or predicts with 3-D features; ``None`` for the plane path. Raises ``ValueError``
        for a loaded classifier of other dims than the image and the checkbox ask, or ('train on:
        every image with labels') strokes on a plane or on a volume of another voxel size."""
        image: Image = self._job_image
        if job.segmenter.features.dims != 3:
            if job.use_loaded and self.features.volume_active:
                raise ValueError(planes_classifier_refusal(self._loaded_name))
            return None
        if not is_volume(image):
            raise ValueError(volume_classifier_refusal(self._loaded_name, image.name, spatial_shape(image)))
        source, others = job.sources[0], job.sources[1:]
        spacing = layer_spacing(image)
        self._check_other_volumes(others, spacing)
        zs = [index[0] for index in job.predict_slices]
        return run_volume_job, (VolumeJob(
            name=source.name, volume=source.image, labels=None if job.use_loaded else source.labels,
            segmenter=job.segmenter, spacing=spacing, planes=slice(min(zs), max(zs) + 1),
            use_loaded=job.use_loaded, want_uncertainty=job.want_uncertainty, labels_name=source.labels_name,
            pixel_size=source.pixel_size, cache=self.cache, others=list(others)),)

    def _check_other_volumes(self, others: list, spacing) -> None:
        """'train on: every image with labels' with 3-D features: every other painted image must be
        a volume of the picked image's voxel size (one classifier learns one scale of filters);
        ``ValueError`` naming those that are not."""
        layers = [self._viewer.layers[source.name] for source in others]
        planes = [layer.name for layer in layers if not is_volume(layer)]
        if planes:
            raise ValueError(f"3-D features train on volumes, and {', '.join(map(repr, planes))} with strokes "
                             f"{'is' if len(planes) == 1 else 'are'} not a single-channel (Z, Y, X) volume: choose "
                             "'train on: this image', or clear those strokes")
        unlike = [f"{layer.name!r} ({describe_spacing(theirs)})" for layer, theirs in
                  ((layer, layer_spacing(layer)) for layer in layers) if theirs != spacing]
        if unlike:
            raise ValueError(f"the volumes with strokes must have the voxel size of {self._job_image.name!r} "
                             f"({describe_spacing(spacing)}) to train one classifier of 3-D features; "
                             f"{', '.join(unlike)} differ: give the layers one scale, or choose 'train on: this image'")

    def _on_volume_result(self, result: VolumeResult) -> None:
        """Write a 3-D job's slices into the image's ``(Z, Y, X)`` predictions (and uncertainty)
        layer and say what was done (GUI thread)."""
        image = take_result(self, result)
        if image is None:
            return
        write_result(self._viewer, image, result, self._labels_layer.value)
        if result.trained_on:
            set_aside = (f"; the loaded {self._loaded_name} is set aside (you painted)" if self.loaded is not None
                         else "")
            self._state.value = f"trained here on {'; '.join(result.trained_on)}{set_aside}"
            self.loaded = None
            source = f"trained on {'; '.join(result.trained_on)} in {result.seconds[0]:.1f} s"
        else:
            source = f"using the loaded classifier {self._loaded_name}"
        z0, z1 = result.planes.start, result.planes.stop
        what = f"slice {z0}" if z1 - z0 == 1 else f"all {z1 - z0} slices"
        claimed = f"; labels layer {self._claimed!r} now belongs to this image" if self._claimed else ""
        doubt = f"; {len(result.messages)} warning(s): {result.messages[-1]}" if result.messages else ""
        self._status.value = (
            f"predicted {what} of {image.name!r} with 3-D features ({describe_spacing(result.spacing)}), "
            f"{result.classifier.n_classes} classes, {source}; predicted in {result.seconds[1]:.1f} s{claimed}{doubt}")
