import pytest
import torch

from dynopool_nas import DynOPool2d
from dynopool_nas.viz import aggregation_range, plot_aggregation_range, plot_feature_maps

PNG = b"\x89PNG\r\n\x1a\n"


def test_feature_map_figure_is_written(tmp_path):
    path = plot_feature_maps({"human": {"pool1": (16, 16), "pool2": (8, 8)},
                              "DynOPool": {"pool1": (21, 14), "pool2": (10, 7)}}, tmp_path / "maps.png", (32, 32))
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="at least one"):
        plot_feature_maps({}, tmp_path / "none.png")


def test_aggregation_range_at_half_scale_is_one_pixel_of_a_2x2_window():
    contribution = aggregation_range(DynOPool2d(0.5, aggregation="mean"), (8, 8), (1, 2))
    expected = torch.zeros(8, 8)
    expected[2:4, 4:6] = 0.25
    assert torch.allclose(contribution, expected)


def test_aggregation_range_follows_the_learned_scale_and_sums_to_one(tmp_path):
    layer = DynOPool2d((0.43, 0.61), aggregation="mean")
    contribution = aggregation_range(layer, (12, 12), (2, 3))
    assert contribution.sum().item() == pytest.approx(1.0)
    rows = contribution.sum(1).nonzero().flatten()
    assert rows.min() >= 4 and rows.max() <= 7  # cell 2 of 5 rows covers input rows ~4.8-7.2
    path = plot_aggregation_range({"DynOPool": contribution}, tmp_path / "range.png", {"DynOPool": layer.output_size})
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="outside"):
        aggregation_range(layer, (12, 12), (9, 0))


def test_tradeoff_figure_is_written_and_empty_input_refused(tmp_path):
    from dynopool_nas.viz import plot_tradeoff

    points = [{"series": "human", "gmacs": g, "top1": a, "label": f"{s}px"} for g, a, s in
              ((0.001, 0.9, 16), (0.003, 0.95, 32))] + [{"series": "DynOPool", "gmacs": 0.002, "top1": 0.96}]
    assert plot_tradeoff(points, tmp_path / "tradeoff.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="at least one point"):
        plot_tradeoff([], tmp_path / "none.png")


def test_tradeoff_points_stand_alone_with_error_bars_on_an_axis_from_zero():
    from dynopool_nas.viz import _tradeoff_figure

    points = [{"gmacs": 0.4, "top1": 0.95, "top1_std": 0.01, "label": "efficientnet_b0"},
              {"gmacs": 0.7, "top1": 0.96, "top1_std": 0.02, "label": "efficientnet_b1"},
              {"gmacs": 0.1, "top1": 0.11, "label": "dynopool:cells (at chance)"}]
    figure = _tradeoff_figure(points, chance=0.1, note="digits at 16x16, 1 epoch, seeds [0, 1]")
    axes = figure.axes[0]
    assert axes.get_ylim() == (0, 100)
    joined = [line for line in axes.get_lines() if line.get_linestyle() != "None" and len(set(line.get_xdata())) > 1]
    assert len(joined) == 1 and set(joined[0].get_ydata()) == {10}  # only the chance line crosses the plot
    assert axes.containers[0].has_yerr
    assert {text.get_text() for text in axes.texts} == {point["label"] for point in points}
    assert any("seeds [0, 1]" in text.get_text() for text in figure.texts)
