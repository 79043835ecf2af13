"""The default tile size from a model's activation memory (micronet.runtime.tiling:
tile_bytes_per_pixel, memory_tile_size)."""

from __future__ import annotations

import logging

import pytest

from micronet.runtime.tiling import TILE_MEMORY_BUDGET, alignment, default_margin, memory_tile_size, tile_bytes_per_pixel

# The bundled families' architectures as their metadata gives them.
WIDE = {"name": "micronet", "widths": [32, 64, 128, 128], "context_channels": 16, "context_depths": [2, 3, 4], "activation": "elu"}
LEAN = {"name": "micronet", "widths": [16, 32, 64, 64], "context_channels": 8, "context_depths": [2, 3, 4], "activation": "relu"}
TINY = {"name": "micronet", "widths": [8, 16, 32, 32], "context_channels": 4, "context_depths": [2, 3, 4]}


def test_bytes_per_pixel_follow_the_widths_and_the_precision():
    # fixed + per value · (Σ widths[d] / 4**d + context channels): 106 values wide, 53 lean.
    assert tile_bytes_per_pixel(WIDE, "fp32") == 128 + 13.5 * 106
    assert tile_bytes_per_pixel(LEAN, "fp32") == 128 + 13.5 * 53
    assert tile_bytes_per_pixel(LEAN, "int8") == 48 + 6.0 * 53
    assert tile_bytes_per_pixel(WIDE, "fp16") == tile_bytes_per_pixel(WIDE, "fp32")  # fp16 runs as fp32 on the CPU
    # A class head adds its hidden map and one logit per class at full resolution.
    # A class head (hidden map and logits, in float at every precision) costs 22 B per value.
    assert tile_bytes_per_pixel({**LEAN, "classes": ["a", "b"]}, "fp32") == 128 + 13.5 * 53 + 22.0 * (16 + 2)
    assert tile_bytes_per_pixel({**LEAN, "classes": ["a", "b"]}, "int8") == 48 + 6.0 * 53 + 22.0 * (16 + 2)


@pytest.mark.parametrize("architecture", [WIDE, LEAN, TINY])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_memory_tile_is_the_largest_on_the_grid_within_the_budget(architecture, precision, batch_size):
    side = memory_tile_size(architecture, precision, batch_size)
    per_pixel = tile_bytes_per_pixel(architecture, precision)
    align = alignment(architecture)
    assert side % align == 0 and side > 2 * default_margin(architecture, 3)
    assert batch_size * side**2 * per_pixel <= TILE_MEMORY_BUDGET
    assert side == 2048 or batch_size * (side + align) ** 2 * per_pixel > TILE_MEMORY_BUDGET


def test_the_bundled_families_get_their_documented_tiles():
    assert memory_tile_size(WIDE, "fp32") == 632  # the accurate model: under 1 GB on a slide
    assert memory_tile_size(LEAN, "fp32") == 856
    assert memory_tile_size(LEAN, "int8") == 1304
    assert memory_tile_size(LEAN, "int8", batch_size=4) == 648  # the batch shares the budget
    assert memory_tile_size(TINY, "int8", budget=8 * TILE_MEMORY_BUDGET) == 2048  # capped


@pytest.mark.parametrize(
    "architecture, precision",
    [({"name": "fcn", "base": 64}, "fp32"), ({"name": "micronet"}, "fp32"), (WIDE, "int4"), ("micronet", "fp32")],
)
def test_unknown_memory_leaves_the_default_to_the_caller(architecture, precision):
    assert tile_bytes_per_pixel(architecture, precision) is None
    assert memory_tile_size(architecture, precision) is None


def test_a_model_beyond_the_budget_gets_four_margins_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="micronet.runtime.tiling"):
        side = memory_tile_size(WIDE, "fp32", budget=50 * 2**20)
    assert side == 4 * default_margin(WIDE, 3) == 320
    assert "more than the 50 MB budget; using tiles of 320² anyway (pass tile_size= to choose)" in caplog.text
