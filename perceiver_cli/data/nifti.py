"""NIfTI volumes read and written as every MRI reader needs them (prepare akoa and knee-seg, predict
on a scan, its label volume): bytes -> a 3D image (nibabel), oriented into sagittal slices, each
volume's intensity window to uint8, slices resized; a label volume written back over the scan."""

from __future__ import annotations

import gzip
import io

import numpy as np
from PIL import Image

from .files import MAX_FILE_BYTES, Unreadable

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def load_nifti(data: bytes, compressed: bool, axis: int | None) -> np.ndarray:
    """The volume as (slices, rows, columns): sagittal slices shown superior up, anterior left;
    or, with a forced axis, the stored voxels cut along it as they are."""
    return oriented(nifti_image(data, compressed), axis)



def nifti_image(data: bytes, compressed: bool):
    """A NIfTI-1 or -2 image of one 3D volume from its file's bytes (its voxels read when asked)."""
    import nibabel as nib

    raw = gunzip(data) if compressed else data
    image = nib.Nifti1Image.from_bytes(raw) if raw[344:348] in (b"n+1\x00", b"ni1\x00") else nib.Nifti2Image.from_bytes(raw)
    if image.ndim != 3 and not (image.ndim == 4 and image.shape[3] == 1):
        raise ValueError(f"expected a 3D volume, got shape {image.shape}")
    return image



def gunzip(data: bytes) -> bytes:
    """A .gz file's bytes unpacked, refused beyond MAX_FILE_BYTES (a few MB of zeros unpack to GBs)."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise Unreadable(f"unpacks to more than {MAX_FILE_BYTES / 1e9:.1f} GB, more than one input may be; "
                         f"not read: check that it is the scan you meant")
    return raw



def oriented(image, axis: int | None) -> np.ndarray:
    """load_nifti's (slices, rows, columns) of a NIfTI image; labels_nifti undoes it."""
    import nibabel as nib

    if axis is not None:
        return np.moveaxis(np.asanyarray(image.dataobj).reshape(image.shape[:3]), axis, 0)
    canonical = nib.as_closest_canonical(image)  # voxel axes become R, A, S
    volume = np.asanyarray(canonical.dataobj).reshape(canonical.shape[:3])  # x (left->right), y (post->ant), z (inf->sup)
    return volume.transpose(0, 2, 1)[:, ::-1, ::-1]  # slice, superior->inferior, anterior->posterior



def labels_nifti(labels: np.ndarray, affine: np.ndarray, axis: int | None) -> bytes:
    """A uint8 label volume on the voxel grid and affine of the image it was predicted for, from
    labels laid out as oriented(image, axis) lays out its voxels (slices, rows, columns): a
    .nii.gz's bytes, so that a viewer shows it over the scan."""
    import nibabel as nib

    labels = np.asarray(labels, dtype=np.uint8)
    if axis is not None:
        voxels = np.moveaxis(labels, 0, axis)
    else:
        canonical = labels[:, ::-1, ::-1].transpose(0, 2, 1)  # back to R, A, S voxel axes
        to_stored = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                                    nib.orientations.io_orientation(affine))
        voxels = nib.orientations.apply_orientation(canonical, to_stored)
    out = nib.Nifti1Image(np.ascontiguousarray(voxels), affine)
    out.set_data_dtype(np.uint8)
    return gzip.compress(out.to_bytes(), compresslevel=6)



def to_uint8(volume: np.ndarray, chosen: list[int]) -> list[np.ndarray]:
    """Per-volume intensity window: clip at the 0.5/99.5 percentiles (of a strided sample of
    voxels, which is plenty for a percentile and 10x cheaper) and scale to 0..255."""
    sample = np.asarray(volume[:: max(1, volume.shape[0] // 16)], dtype=np.float32).ravel()
    sample = sample[np.isfinite(sample)]  # one NaN would make every percentile NaN, and the scan black
    if not sample.size:
        sample = np.asarray(volume, dtype=np.float32)[np.isfinite(volume)]
        if not sample.size:
            raise Unreadable("holds no finite intensity (every voxel is NaN or infinite); check the scan")
    low, high = np.percentile(sample, [0.5, 99.5])
    if not high > low:
        high = low + 1.0
    # NaN voxels are black; infinities clip to the window's ends
    return [np.round(np.nan_to_num(np.clip((np.asarray(volume[i], dtype=np.float32) - low) / (high - low), 0, 1)) * 255)
            .astype(np.uint8) for i in chosen]



def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape == tuple(size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.Resampling.BILINEAR))
