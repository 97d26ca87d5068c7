"""Bucket math and SDXL crop conditioning pinned against hand calculations (spec 2.6, 2.8)."""

from __future__ import annotations

from sdxl_lora.config.dataset_toml import DatasetConfig
from sdxl_lora.data.buckets import (
    bucket_resolutions,
    bucketing_for,
    centre_offset,
    cover_size,
    crop_top_left,
    nearest_bucket,
    no_upscale_bucket,
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
    # 3000x2000 (1.5) at 1024x1024 (max_area 1048576), step 64. Height on the grid: 832 -> width floor(1248) =
    # 1216, area 1011712, covered at 832/2000 -> 1248x832, crop 2.6%; 896 -> 1344: too big. Width on the grid:
    # 1216 -> height floor(810.7) = 768, smaller; 1280 -> 832: 1064960, too big. Best 1216x832.
    assert no_upscale_bucket((3000, 2000), 1024 * 1024, 64) == (1216, 832)
    assert bucketing_for(dataset(enable_bucket=True, bucket_no_upscale=True)).fit((3000, 2000)) == (
        (1216, 832), (1248, 832))


def test_bucket_no_upscale_keeps_the_largest_grid_box_sd_scripts_loses():
    # sd-scripts PR 2352: 3072x3000 at 1024 gave 960x960. Height 1024 -> width floor(1048.6) = 1024, area
    # exactly 1048576, resized 1049x1024 (crop 2.4%); the next candidates (1088 on either side) are too big.
    assert no_upscale_bucket((3072, 3000), 1024 * 1024, 64) == (1024, 1024)
    # max_area 262144. 900x500 (1.8): height 384 -> width floor(691.2) = 640, 245760, resized 691x384, crop
    # 7.4%; height 448 -> 768: 344064 too big; width 704 -> height 384: 270336 too big. sd-scripts: 576x320.
    assert no_upscale_bucket((900, 500), 512 * 512, 64) == (640, 384)
    # 1100x1000 (1.1): height 512 -> width floor(563.2) = 512: exactly 262144, resized 563x512, crop 9.1%.
    assert no_upscale_bucket((1100, 1000), 512 * 512, 64) == (512, 512)


def test_bucket_no_upscale_limits_the_crop():
    # 1000x300 (3.333) at 262144: width 960 -> height floor(288) = 256 (245760) crops 1 - 256/288 = 11.1%: out.
    # Width 896 -> floor(268.8) = 256, resized 896x269, crop 4.8%: 229376, the largest left.
    assert no_upscale_bucket((1000, 300), 512 * 512, 64) == (896, 256)
    assert cover_size((1000, 300), (896, 256)) == (896, 269)
    # 2000x200 (10): height 128 -> width 1280 (no crop); height 192 -> 1920: too big. Wider boxes with height
    # 128 crop at least 1 - 128/160 = 20% (1600x128 from 1600x160): out. Best 1280x128, as sd-scripts.
    assert no_upscale_bucket((2000, 200), 512 * 512, 64) == (1280, 128)


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
