"""napari dock widgets: the only package that imports napari or Qt."""
