"""The Compare page's structure families offer a chosen SliceGPT or Monarch point as a zip of its saved folder: the
zip reloads (``load_structured``) into a model whose outputs equal a direct ``slice_model`` / ``monarchize`` call's
bit for bit; nothing is offered before the families are measured, and only points that were measured."""
import io
import zipfile

import torch

from sparsekit.structured import MonarchConfig, load_structured, monarchize, slice_model
from devtools.apptest import page_app
from tests.conftest import shared_model

TIMEOUT = 240


def unzip(data: bytes, where) -> list:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(archive.namelist())
        archive.extractall(where)
    return names


def test_download_of_a_sliced_and_a_monarch_vit(digits_cache, downloads, tmp_path):
    at = page_app("compare", "digits:vit", TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert "cmp_fam_pick" not in [s.key for s in at.selectbox]  # nothing measured, nothing to download
    at.multiselect(key="cmp_nm").set_value(["2:4"])
    at.multiselect(key="cmp_sparsity").set_value([50])
    at.multiselect(key="cmp_fam_slice").set_value([20])
    at.multiselect(key="cmp_fam_blocks").set_value([4, 3])  # 3 fits no layer of the ViT: not offered
    at.run()
    at.button(key="cmp_fam_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    pick = at.selectbox(key="cmp_fam_pick")
    assert pick.options == ["SliceGPT slice 20%", "Monarch 4 blocks"]
    assert "SliceGPT slice 20% (.zip)" not in downloads  # made only on request

    vit = shared_model("digits:vit")
    images = vit.calibration[:40]
    for label, direct in [("SliceGPT slice 20%", lambda: slice_model(vit, 0.2, progress=False)),
                          ("Monarch 4 blocks", lambda: monarchize(vit, MonarchConfig(blocks=4), progress=False))]:
        at.selectbox(key="cmp_fam_pick").set_value(label).run()
        at.button(key="cmp_fam_prepare").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        data = downloads[f"{label} (.zip)"]
        name = f"digits-vit-{label}".replace(" ", "-").replace("%", "pct")
        assert unzip(data, tmp_path / label) == [f"{name}/model.safetensors", f"{name}/structure.json"]
        back = load_structured(tmp_path / label / name, base=vit)
        want = direct().model
        with torch.no_grad():
            assert torch.equal(back.model(images), want(images))
            assert not torch.equal(back.model(images), vit.module(images))
        assert any("load_structured" in c.value for c in at.caption)
