"""A second backbone plugs in without touching the inference layer: a DiffusionUNet checkpoint goes through
Predictor.from_checkpoint, the stitched sliding windows and the file writers exactly as a WiDiT does."""

import nibabel as nib
import numpy as np
import torch
from inference_volumes import save_nifti

from medwidit.diffusion import DiffusionSegmenter, save_segmenter
from medwidit.inference import Predictor
from medwidit.nets import DiffusionUNet


def test_unet_checkpoint_segments_files_on_the_input_grid(tmp_path):
    torch.manual_seed(0)
    net = DiffusionUNet(spatial_dim=3, in_channels=2, channels=[8, 16], norm_num_groups=4)
    path = tmp_path / "unet.pt"
    preprocessing = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "zscore_nonzero"}
    save_segmenter(
        DiffusionSegmenter(net, num_classes=2),
        path,
        extra_config={"preprocessing": preprocessing, "roi_size": [8, 8, 8]},
    )
    source = save_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).normal(size=(13, 11, 9)).astype("f4"))
    predictor = Predictor.from_checkpoint(path, device="cpu", max_whole_voxels=0)  # force stitched windows
    assert predictor.roi_size == [8, 8, 8]
    result = predictor.segment(source, steps=2, num_samples=2)
    assert result.labels.shape == (13, 11, 9)
    np.testing.assert_array_equal(result.labels.affine, nib.load(source).affine)
    np.testing.assert_allclose(result.probability.sum(0), 1.0, atol=1e-5)
