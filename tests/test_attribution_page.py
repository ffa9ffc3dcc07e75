"""The Attribution page through AppTest: IG maps against a plain autograd computation."""
import json

import numpy as np
import pytest
import torch

import sparsekit
from sparsekit.attribution import digits_examples
from sparsekit.sparsify import SparsifyConfig, sparsify
from devtools.apptest import decode, page_app

TIMEOUT = 180


def riemann_ig(module, x, target, steps=300):
    total = torch.zeros_like(x)
    for k in range(steps):
        point = ((k + 0.5) / steps * x).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(module(point)[0, target], point)
        total += grad
    return (x * total / steps)[0, 0]


def test_attribution_page_digits(digits_cache):
    mlp = sparsekit.load_model("digits:mlp")
    cfg = SparsifyConfig(pattern="nm", n=2, m=4)
    at = page_app("attribution", "digits:mlp", TIMEOUT, config_json=cfg.to_json())
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Attribution drift"
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    image, dense_map, sparse_map = (decode(t["z"]) for t in fig["data"])
    images, labels = digits_examples(20)
    assert np.allclose(image, images[0, 0].numpy(), atol=1e-6)
    target = int(mlp.module(images[:1]).argmax())
    sparse = sparsify(mlp, cfg).model
    # 64 Gauss-Legendre steps on a piecewise-linear net against 300 midpoints: within 1% of the peak.
    for shown, module in ((dense_map, mlp.module), (sparse_map, sparse)):
        reference = riemann_ig(module, images[:1], target).numpy()
        assert np.abs(shown - reference).max() <= 0.01 * np.abs(reference).max()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Correlation (this image)"] == f"{np.corrcoef(dense_map.ravel(), sparse_map.ravel())[0, 1]:.3f}"

    at.selectbox(key="at_method").set_value("sparsegpt").run()
    at.selectbox(key="at_image").set_value(3).run()
    assert not at.exception and not at.error
    assert len(at.dataframe[0].value) == 20


def test_attribution_page_refuses_causal_lms(model_root):
    at = page_app("attribution", "hf", TIMEOUT)
    at.run()
    at.sidebar.selectbox(key="hf_choice").set_value(str(model_root / "tiny-llama")).run()
    assert not at.exception
    assert "digits classifiers and sentence encoders" in at.info[0].value


@pytest.mark.slow
def test_attribution_page_minilm():
    at = page_app("attribution", "minilm", 300)
    at.run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 2
    at.button(key="at_summary_run").click().run()
    assert not at.exception and len(at.dataframe[0].value) == 4
