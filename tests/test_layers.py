"""sparsekit.layers: the grouped 2-D view of every weight layout, against index loops."""
import pytest
import torch
from torch import nn

from sparsekit.layers import grouped_view, in_features, layer_group, matrix_view, out_features, prunable_layers


class Conv1D(nn.Module):
    """Stands in for transformers' GPT-2 Conv1D: a linear layer storing its weight as [in, out]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))


def test_conv_channel_view_puts_m_input_channels_of_one_position_together():
    w = torch.arange(2 * 8 * 3 * 3).reshape(2, 8, 3, 3)
    view = grouped_view(nn.Conv2d(8, 2, 3), "channel")
    mat = view.matrix(w)
    assert mat.shape == (2, 72) and view.group_axis == (8, "in_channels")
    for o in range(2):
        for kh in range(3):
            for kw in range(3):
                for c in range(8):
                    assert mat[o, (kh * 3 + kw) * 8 + c] == w[o, c, kh, kw]
    assert torch.equal(view.from_matrix(mat), w)
    kernel = grouped_view(nn.Conv2d(8, 2, 3), "kernel")
    assert torch.equal(kernel.matrix(w), w.reshape(2, -1)) and kernel.group_axis == (72, "in_channels*kernel")
    assert torch.equal(matrix_view(w, "channel"), mat)


def test_gpt2_conv1d_is_transposed_and_linear_is_as_is():
    layer = Conv1D(nf=6, nx=4)  # 4 inputs, 6 outputs
    view = grouped_view(layer)
    assert view.transposed and view.matrix_shape == (6, 4) and view.group_axis == (4, "in_features")
    assert torch.equal(view.matrix(layer.weight), layer.weight.t())
    assert torch.equal(view.from_matrix(layer.weight.t()), layer.weight)
    assert in_features(layer) == 4 and out_features(layer) == 6
    lin = nn.Linear(4, 6)
    assert torch.equal(grouped_view(lin).matrix(lin.weight), lin.weight)
    with pytest.raises(ValueError, match="does not fit"):
        grouped_view(lin).matrix(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="conv_grouping"):
        grouped_view(lin, "rows")


def test_prunable_layers_and_groups():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv2d(1, 2, 3), nn.LayerNorm(4))
    model.add_module("c_attn", Conv1D(12, 4))
    assert [n for n, _ in prunable_layers(model)] == ["0", "2", "c_attn"]
    assert layer_group("encoder.layer.0.attention.self.query") == "attention"
    assert layer_group("encoder.layer.0.output.dense") == "mlp"
    assert layer_group("head") == "other"
