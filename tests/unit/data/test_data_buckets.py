"""Bucket math and SDXL crop conditioning pinned against hand calculations (spec 2.6, 2.8)."""

from __future__ import annotations

from sdxl_lora.config.dataset_toml import DatasetConfig
from sdxl_lora.data.buckets import (
    bucket_resolutions,
    bucketing_for,
    centre_offset,
    cover_size,
    crop_top_left,
    floor_to_step,
    nearest_bucket,
    no_upscale_size,
)


def dataset(**settings) -> DatasetConfig:
    return DatasetConfig(subsets=(), **{"resolution": (1024, 1024), **settings})


def test_bucket_list_by_hand():
    # max_area 512*512 = 262144, step 64. Square: floor(512/64)*64 = 512.
    # w=256: 262144//256=1024 -> 1024; w=320: 819 -> 768; w=384: 682 -> 640; w=448: 585 -> 576; w=512: 512;
    # w=704: 372 -> 320; w=832: 315 -> 256; w=896: 292 -> 256; w=960: 273 -> 256; w=1024: 256 -> 256.
    # (w=576, 640, 768 give mirrors of pairs already listed.) Each (w, h) is added with (h, w).
    assert bucket_resolutions((512, 512), 256, 1024, 64) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
        (1024, 256),
    ]


def test_1536x1024_goes_to_1216x832():
    # resolution 1024, step 64, min 256, max 2048. Aspect 1.5. Candidates near it:
    # w=1152: 1048576//1152=910 -> 896 (aspect 1.286); w=1216: 862 -> 832 (1.4615); w=1280: 819 -> 768 (1.667).
    # |1.4615-1.5| = 0.038 is the smallest. 1.5 > 1.4615 so scale = 832/1024 = 0.8125 -> (1248, 832).
    buckets = bucket_resolutions((1024, 1024), 256, 2048, 64)
    bucket = nearest_bucket((1536, 1024), buckets)
    assert bucket == (1216, 832)
    assert cover_size((1536, 1024), bucket) == (1248, 832)
    assert bucketing_for(dataset(enable_bucket=True, max_bucket_reso=2048)).fit((1536, 1024)) == (
        (1216, 832), (1248, 832))


def test_image_of_bucket_size_keeps_its_size_and_portrait_scales_by_width():
    buckets = bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert (832, 1216) in buckets and nearest_bucket((832, 1216), buckets) == (832, 1216)
    # 1000x1500 (aspect 0.667): 832x1216 (0.684, error 0.018) beats 768x1280 (0.6, error 0.067);
    # 0.667 < 0.684 so scale = 832/1000.
    assert nearest_bucket((1000, 1500), buckets) == (832, 1216)
    assert cover_size((1000, 1500), (832, 1216)) == (832, 1248)


def test_no_bucket_mode_is_one_bucket_of_resolution():
    bucketing = bucketing_for(dataset(resolution=(512, 768)))
    assert bucketing.buckets == ((512, 768),)
    # 1000x1000 onto 512x768: aspect 1 > 0.667, scale = 768/1000 -> (768, 768), cropped to 512 wide.
    assert bucketing.fit((1000, 1000)) == ((512, 768), (768, 768))


def test_rounded_limits_are_used():
    bucketing = bucketing_for(dataset(resolution=(512, 512), enable_bucket=True, min_bucket_reso=300,
                                      max_bucket_reso=1000))
    assert min(min(b) for b in bucketing.buckets) == 256  # 300 rounded down
    assert max(max(b) for b in bucketing.buckets) == 1024  # 1000 rounded up


def test_bucket_no_upscale_large_image():
    # max_area 1048576, a = 1.5: rw = sqrt(1048576*1.5) = 1254.1, rh = 836.1.
    # Width candidate: R(1254.1) = 1216, R(1216/1.5 = 810.7) = 768 -> aspect 1.583, error 0.083.
    # Height candidate: R(836.1) = 832, R(832*1.5 = 1248) = 1216 -> aspect 1.4615, error 0.038: wins.
    # resized = (int(832*1.5 + 0.5), 832) = (1248, 832); bucket floors 1248 to 1216.
    assert no_upscale_size((3000, 2000), 1024 * 1024, 64) == (1248, 832)
    assert floor_to_step((1248, 832), 64) == (1216, 832)
    assert bucketing_for(dataset(enable_bucket=True, bucket_no_upscale=True)).fit((3000, 2000)) == (
        (1216, 832), (1248, 832))


def test_bucket_no_upscale_width_candidate_can_win():
    # max_area 262144, 1000x300 (a = 3.333): rw = sqrt(262144*3.333) = 934.8, rh = 280.4.
    # Width: R(934.8) = 896, R(896/3.333 = 268.8) = 256 -> 3.5, error 0.167.
    # Height: R(280.4) = 256, R(256*3.333 = 853.3) = 832 -> 3.25, error 0.083: wins -> (853, 256).
    assert no_upscale_size((1000, 300), 512 * 512, 64) == (853, 256)
    # 900x500 (a = 1.8): rw = 686.9, rh = 381.6. Width: R(686.9) = 640, R(355.6) = 320 -> 2.0, error 0.2.
    # Height: R(381.6) = 320, R(576) = 576 -> 1.8, error 0: wins -> (576, 320).
    assert no_upscale_size((900, 500), 512 * 512, 64) == (576, 320)
    # 700x400 (a = 1.75): rw = 677.3, rh = 387.0. Width: R(677.3) = 640, R(365.7) = 320 -> 2.0, error 0.25.
    # Height: R(387.0) = 384, R(672) = 640 -> 1.667, error 0.083: wins -> (672, 384).
    assert no_upscale_size((700, 400), 512 * 512, 64) == (672, 384)
    # 2000x200 (a = 10): rw = 1619.1, rh = 161.9. Width: R(1619.1) = 1600, R(160) = 128 -> 12.5, error 2.5.
    # Height: R(161.9) = 128, R(1280) = 1280 -> 10, error 0: wins -> (1280, 128).
    assert no_upscale_size((2000, 200), 512 * 512, 64) == (1280, 128)
    # 1100x1000 (a = 1.1): rw = 537.0, rh = 488.2. Width: R(537.0) = 512, R(465.5) = 448 -> 1.143, error 0.043.
    # Height: R(488.2) = 448, R(492.8) = 448 -> 1.0, error 0.1. Width wins -> (512, int(465.5 + 0.5) = 465).
    assert no_upscale_size((1100, 1000), 512 * 512, 64) == (512, 465)


def test_bucket_no_upscale_small_image_is_not_enlarged():
    bucketing = bucketing_for(dataset(enable_bucket=True, bucket_no_upscale=True))
    assert bucketing.fit((500, 300)) == ((448, 256), (500, 300))


def test_crop_top_left_is_the_crop_actually_applied():
    # 1536x1024 resized to cover bucket 1216x832: resized 1248x832 (832/1024 = 0.8125); centre window left =
    # (1248 - 1216) // 2 = 16, top 0 -> conditioning (top, left) = (0, 16). Flipped, the window's left edge
    # is what was cut on the right: 1248 - 1216 - 16 = 16.
    assert crop_top_left((1248, 832), (1216, 832), (16, 0), flipped=False) == (0, 16)
    assert crop_top_left((1248, 832), (1216, 832), (16, 0), flipped=True) == (0, 16)
    # A random window at left 5 of 37 excess pixels: flipped, 37 - 5 = 32 were cut on the (new) left.
    assert crop_top_left((1253, 832), (1216, 832), (5, 0), flipped=True) == (0, 32)
    # Tall image: 1000x1500 covering 1024x1024 -> 1024x1536, centre top = 512 // 2 = 256.
    assert centre_offset((1024, 1536), (1024, 1024)) == (0, 256)
    assert crop_top_left((1024, 1536), (1024, 1024), (0, 256), flipped=True) == (256, 0)
    # Same size: nothing cut.
    assert crop_top_left((832, 1216), (832, 1216), (0, 0), flipped=True) == (0, 0)
